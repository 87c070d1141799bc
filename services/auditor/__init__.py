"""The auditor: replays l2net's history, reports drift between intent and kernels, heals.

Modules: ``view`` (the pure fold of events into per-node views and drift episodes),
``ledger`` (what ``L2_DRIFT`` holds and so what to publish, once: pure), ``healing`` (the
heal policy and the heals it schedules), ``service``
(:class:`~services.auditor.service.Auditor`, the wiring: replay, follow, publish, live
checks; the NATS micro service ``l2net-auditor``), ``protocol`` (the
``l2.auditor.*`` request and reply bodies), ``client`` (the typed client of those requests:
:func:`~services.auditor.client.check` and :func:`~services.auditor.client.audit_once` for
scripts), ``report`` (the readable diff), ``cli`` (``l2net auditor``, ``l2net audit``,
``l2net history``) and ``demo``
(:func:`~services.auditor.demo.drift_and_heal`, the end of ``make demo``). See
docs/auditor.md.
"""
