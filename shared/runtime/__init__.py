"""The runtime: the NATS connection and services (``bus``), the embedded nats-server,
tracing, metrics, configuration, process lifecycle, running a command (``runner``) and the
request helper every typed client uses (``client``). Imports the domain and the wire."""
