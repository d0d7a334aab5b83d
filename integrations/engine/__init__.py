"""The scenario engine: durable runs of an integration's graph of elements.

Plain services (``integrations.engine.services``) that a Celery task, a management
command or a web request with a deadline can drive; pure helpers for connection
conditions (``conditions``) and wait times (``waits``).
"""
