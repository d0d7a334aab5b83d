"""The bare baseline for the intake benchmark: a DRF APIView inserting one row.

Installed only by the benchmark (``EXTRA_INSTALLED_APPS=bench.bareapp``)."""
