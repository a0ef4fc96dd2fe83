"""Weak tables for tether's own bookkeeping, built on _weakref alone.

Importing the standard library's weakref module (weakref.py and _weakrefset) costs a
fresh interpreter about a millisecond, a fortieth of a spawned child's whole start; the
child needs only these two small tables of it. As in weakref.WeakValueDictionary, an
entry goes when its object is collected, from whichever thread collects it, and
_remove_dead_weakref removes it only if the entry still holds that dead reference (a new
object may have taken the key meanwhile).
"""

from _weakref import _remove_dead_weakref, ref

__all__ = ["WeakMembers", "WeakValues", "ref"]


class WeakValues:
    """key -> object, holding the objects weakly: ``t[key] = obj``, ``t.get(key)``."""

    __slots__ = ("_refs",)

    def __init__(self):
        self._refs = {}

    def __setitem__(self, key, value):
        refs = self._refs
        refs[key] = ref(value, lambda dead, key=key: _remove_dead_weakref(refs, key))

    def get(self, key, default=None):
        entry = self._refs.get(key)
        value = entry() if entry is not None else None
        return default if value is None else value

    def __len__(self):
        return sum(entry() is not None for entry in list(self._refs.values()))


class WeakMembers:
    """A set holding its members weakly: add, discard, iteration, len and truth."""

    __slots__ = ("_refs",)

    def __init__(self):
        self._refs = {}  # id(member) -> weak reference; an id is not reused while alive

    def add(self, member):
        refs = self._refs
        key = id(member)
        entry = refs.get(key)
        if entry is None or entry() is not member:
            refs[key] = ref(member, lambda dead, key=key: _remove_dead_weakref(refs, key))

    def discard(self, member):
        entry = self._refs.get(id(member))
        if entry is not None and entry() is member:
            self._refs.pop(id(member), None)

    def __iter__(self):
        for entry in list(self._refs.values()):
            member = entry()
            if member is not None:
                yield member

    def __len__(self):
        return sum(entry() is not None for entry in list(self._refs.values()))

    def __bool__(self):
        return any(entry() is not None for entry in list(self._refs.values()))
