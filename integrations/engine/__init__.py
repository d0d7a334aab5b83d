"""The scenario engine: durable runs of an integration's graph of elements.

Plain services (``integrations.engine.services``) that a Celery task, a management
command or a web request with a deadline can drive; pure helpers for connection
conditions (``conditions``) and wait times (``waits``).

The polling pattern (a buyer that answers "pending" and must be asked again)::

    start -> breaker {limit: N} -> request
    request -> set variable / next step    when variable status equals done
    request -> wait {mode: delay, seconds: 30}   when variable status not equals done
    wait -> repeater -> breaker

Each wait is a pending step due 30 s later (no worker holds it); the sweeper wakes it;
the breaker counts every pass including the first and fails the run with "breaker limit
reached" after N requests.
"""
