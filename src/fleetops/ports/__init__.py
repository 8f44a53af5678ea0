"""The narrow interfaces between the use cases / engine and the adapters (store, messaging)."""
