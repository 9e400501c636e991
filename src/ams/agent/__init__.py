"""ams-agent: runs on a managed device, rotates its administrator password."""
