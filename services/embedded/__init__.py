"""`app-engine up`: PostgreSQL, NATS and the four services as supervised processes on one machine,
behind one port.

Modules: ``up`` (start-up and shutdown order), ``supervisor`` (child processes, restarts),
``servers`` (the embedded PostgreSQL and NATS, the Docker check), ``datadir`` (the data directory
and ``embedded.json``), ``gateway`` (the streaming reverse proxy and its routing table),
``settings``.
"""
