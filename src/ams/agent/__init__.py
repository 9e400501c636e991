"""ams-agent: runs on a managed device, rotates its administrator password.

It registers with an AMS server once (``ams-agent register``), then checks in on an
interval (``ams-agent run``): when the server says so it generates a new password, encrypts
it to the certificate the server names, reports it, and only then sets it on the device.
"""
