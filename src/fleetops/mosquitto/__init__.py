"""The fleetops Mosquitto plugin: its C source (shipped as package data) and the build (docs/mosquitto.md)."""
