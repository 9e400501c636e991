"""Directories (forests) and their point-in-time snapshots (docs/architecture.md).

Modules: ``directories`` (create, list, show, delete), ``objects`` (entries by DN),
``ldif`` (RFC 2849 read and write), ``snapshots`` (manual and automatic snapshots, restore
requests), ``snapfile`` (the checksummed snapshot file), ``restore`` (the restore worker and
its journal), ``regions`` (replicas), ``background`` (the jobs ``ams serve`` runs).
"""
