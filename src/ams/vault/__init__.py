"""The vault: password encryption certificates, devices and their passwords.

``certificates`` keeps each scope's certificates (one active); ``regkeys``, ``devices``,
``passwords``, ``retention`` and ``policy`` register devices, store the password blobs
they send and decide when they rotate. Interfaces (CLI, REST, web) call these services.
"""
