"""The wire: subjects, the request and reply bodies of every service (``api`` for the
planner, ``auditor_api``, ``lab_api``), the JSON codec, intents' canonical bytes and
signatures. Data only: imports the domain, no I/O."""
