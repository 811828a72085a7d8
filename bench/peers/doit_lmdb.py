"""An LMDB dependency backend for doit 0.37, so that doit is compared on repx's storage engine.

doit's default backend on this machine is ``dbm.dumb`` (the pyenv Python has no ``_gdbm``),
which would make the comparison about a slow store rather than about the engine. This class
follows doit's backend protocol (``__init__(name, codec, *, module_name=None)``, ``get``,
``set``, ``in_``, ``remove``, ``remove_all``, ``dump``) and is registered with a ``[BACKEND]``
section in ``doit.cfg`` (``lmdb = doit_lmdb:LmdbDB``); the dodo selects it by name.

Like doit's own backends it caches decoded task records and writes the dirty ones at
``dump()`` (one write transaction per run), so it changes doit's storage cost, not its model.
"""

from __future__ import annotations

from typing import Any

import lmdb


class LmdbDB:
    """doit's per-task ``{dependency: value}`` dicts, JSON-encoded by doit's codec, in LMDB."""

    desc = "LMDB environment (bench plug-in)"

    def __init__(self, name: str, codec: Any, *, module_name: str | None = None) -> None:
        self.name = name
        self.codec = codec
        # One environment directory; sync at dump only, like the other doit backends.
        self._env = lmdb.open(name, map_size=1 << 31, subdir=True, max_dbs=0,
                              readahead=False, metasync=False)
        self._txn: lmdb.Transaction | None = self._env.begin(buffers=False)
        self._db: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()

    def _stored(self, task_id: str) -> bytes | None:
        if task_id in self._removed or self._txn is None:
            return None
        return self._txn.get(task_id.encode())

    def get(self, task_id: str, dependency: str) -> Any:
        """The saved value, decoding the task's record once per run."""
        data = self._db.get(task_id)
        if data is None:
            raw = self._stored(task_id)
            if raw is None:
                return None
            data = self._db[task_id] = self.codec.decode(raw.decode())
        return data.get(dependency)

    def set(self, task_id: str, dependency: str, value: Any) -> None:
        if task_id not in self._db:
            raw = self._stored(task_id)
            self._db[task_id] = self.codec.decode(raw.decode()) if raw is not None else {}
        self._db[task_id][dependency] = value
        self._dirty.add(task_id)
        self._removed.discard(task_id)

    def in_(self, task_id: str) -> bool:
        return task_id in self._dirty or self._stored(task_id) is not None

    def remove(self, task_id: str) -> None:
        self._db.pop(task_id, None)
        self._dirty.discard(task_id)
        self._removed.add(task_id)

    def remove_all(self) -> None:
        self._db.clear()
        self._dirty.clear()
        if self._txn is not None:
            self._removed.update(key.decode() for key in self._txn.cursor().iternext(values=False))

    def dump(self) -> None:
        """Write every changed record in one transaction, then close (doit calls this once)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        with self._env.begin(write=True) as txn:
            for task_id in self._removed:
                txn.delete(task_id.encode())
            for task_id in self._dirty:
                txn.put(task_id.encode(), self.codec.encode(self._db[task_id]).encode())
        self._env.sync(True)
        self._env.close()
