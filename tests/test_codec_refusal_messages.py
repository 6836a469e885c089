"""What a put refused by the serializer says, and that it leaves the queue as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import spoolq


class _RefusesSets:
    name = "no-sets"

    @staticmethod
    def dumps(obj: Any) -> bytes:
        if isinstance(obj, set):
            raise ValueError("sets are not taken")
        return repr(obj).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return data.decode()


def test_a_custom_serializer_s_refusal_names_it_without_suggesting_pickle(
        tmp_path: Path) -> None:
    # The pickle hint is for a built-in serializer: a custom one refuses what its author
    # chose to refuse, and its queue cannot be reopened with pickle anyway.
    with spoolq.SyncQueue.create(str(tmp_path / "q.sqlite"), serializer=_RefusesSets()) as q:
        q.put(1)
        with pytest.raises(spoolq.SerializationError) as refused:
            q.put_many([2, {3}])
        assert str(refused.value) == ("the no-sets serializer cannot encode set: "
                                      "sets are not taken")
        assert q.qsize() == 1 and q.get() == "1"
    with spoolq.SyncQueue.create(str(tmp_path / "j.sqlite"), serializer="json") as q:
        with pytest.raises(spoolq.SerializationError,
                           match="serializer='pickle' takes arbitrary Python objects"):
            q.put({3})
        assert q.qsize() == 0
