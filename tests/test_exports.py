"""The public surfaces that other modules (and later, other programs) build on."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import ams.crypto

SRC = Path(__file__).resolve().parents[1] / "src" / "ams"


def test_crypto_surface() -> None:
    assert set(ams.crypto.__all__) >= {
        "SecretBox",
        "WrappedKey",
        "fingerprint",
        "generate_master_key",
        "wrap_with_key",
        "unwrap_with_key",
        "wrap_with_password",
        "unwrap_with_password",
        "constant_time_equal",
    }
    for name in ams.crypto.__all__:
        assert hasattr(ams.crypto, name)
    # The names load their module on first use: the map and the surface agree.
    assert sorted(ams.crypto.__all__) == sorted(ams.crypto._WHERE)
    for name, module in ams.crypto._WHERE.items():
        assert getattr(importlib.import_module(f"ams.crypto.{module}"), name) is getattr(ams.crypto, name)


def test_only_the_crypto_package_imports_cryptography() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if SRC / "crypto" in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "cryptography" or n.startswith(("cryptography.", "argon2")) for n in names):
                offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_services_never_import_interfaces() -> None:
    interfaces = ("ams.cli", "ams.api", "ams.web")
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("cli", "api", "web", "agent") or rel.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(interfaces):
                if node.module not in interfaces and not node.module.startswith(
                    tuple(i + "." for i in interfaces)
                ):
                    continue  # ams.apikeys is a service, not ams.api
                offenders.append(f"{rel}: {node.module}")
    assert offenders == []
