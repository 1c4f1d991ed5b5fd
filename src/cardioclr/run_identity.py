"""One answer to "is this the same configuration?" for every stage and the study.

A run's *identity* is the plain form of its configuration (``cardioclr.provenance.to_plain``:
dicts, lists, strings and numbers; the callers convert) without the fields that do not change
what it computes (hardware, paths, progress display).
Every resumable stage compares the identity saved beside its results with the identity of the
configuration it is asked to run, and refuses (naming the differences) rather than reusing or
extending results of another configuration:

* ``segment train``: ``done.json``'s / ``config.yaml``'s ``config``;
* ``pretrain``: ``metrics.json``'s ``config`` (:func:`cardioclr.ssl.pretrain.run_key`);
* ``finetune``: ``metrics.json``'s ``fingerprint`` (:func:`digest` of the identity);
* ``study``: ``OUT/study.yaml`` (:func:`cardioclr.study.config.config_differences`).

Fields are named by dotted keys (``trainer.devices``); ignoring a key ignores everything under
it (``report`` ignores ``report.n_boot``). Imports nothing of cardioclr (bottom layer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any


def _drop(plain: Any, ignore: Collection[str], where: str = "") -> Any:
    if not isinstance(plain, dict):
        return plain
    out = {}
    for k, v in plain.items():
        key = f"{where}.{k}" if where else str(k)
        if key not in ignore:
            out[k] = _drop(v, ignore, key)
    return out


def run_identity(plain: Mapping[str, Any], ignore: Collection[str] = ()) -> dict[str, Any]:
    """The result-relevant configuration: the plain configuration ``plain`` (``to_plain`` of a
    config dataclass, or a saved ``config.yaml``) without the dotted keys in ``ignore``."""
    return dict(_drop(dict(plain), ignore))


def differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Collection[str] = (),
                additive: Collection[str] = ()) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs (sorted, depth first).

    ``ignore``: dotted keys not compared. ``additive``: mappings to which ``new`` may add keys
    (a key absent or None in ``old``) without that counting as a difference.
    """
    diffs: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if where in ignore:
            return
        if a is None and b is not None and where.rpartition(".")[0] in additive:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        elif a != b:
            diffs.append(f"{where}: {a!r} -> {b!r}")

    walk(dict(old), dict(new), "")
    return diffs


def digest(identity: Mapping[str, Any]) -> str:
    """A short stable hash of an identity (16 hex characters of SHA-1 over sorted JSON)."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
