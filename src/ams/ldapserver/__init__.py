"""The LDAPv3 endpoint of the hosted directories (``ams serve --ldap-port``).

:mod:`~ams.ldapserver.server` listens and answers, :mod:`~ams.ldapserver.codec` turns
messages into bytes and back with ldap3's ASN.1 definitions over pyasn1, and
:mod:`~ams.ldapserver.access` decides who is bound and what they may read and write.
"""

from __future__ import annotations

from ams.ldapserver.server import LdapServer

__all__ = ["LdapServer"]
