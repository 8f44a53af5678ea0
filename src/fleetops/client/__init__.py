"""The operator's commands (``fleetops tasks | products | devices list``) as clients of the API, like tccli.

They sign TC3-HMAC-SHA256 requests themselves (``fleetops.api.signing``, the same pure functions the server
verifies with) and send them over HTTP, so they work against any node, local or remote, and never read the
database. ``api`` is the transport, ``credentials`` finds the key pair, ``tasks`` / ``fleet`` / ``watch`` do
the work of each command; ``fleetops.cli`` only parses options.
"""
