"""Crash-safe variant of kombu's file-system transport (the embedded default broker).

Why: kombu's stock ``filesystem://`` transport (5.7.0) has a read/write race that kills
the Celery worker, https://github.com/celery/kombu/issues/1551 (still open). The producer
*creates* ``<ms>_<uuid>.<queue>.msg`` and only then writes into it; a consumer listing the
folder in between reads an empty or half-written file, ``json.loads`` raises
``JSONDecodeError``, nothing catches it and the worker exits. The stock consumer also
claims a message by moving it into ``tempfile.gettempdir()``, which may be another
filesystem (a copy, not an atomic rename).

What changes here (everything else is kombu's, which is why kombu is pinned):

* ``_put`` writes the message to a hidden dot-file in the same folder and ``os.replace``-s
  it onto its final name, so a message file is either absent or complete. Names start with
  zero-padded nanoseconds (stock: unpadded milliseconds, then a random uuid), so messages
  from one producer are consumed in the order they were sent.
* ``_get`` claims a message by renaming it, inside the queue folder, to a hidden name only
  this consumer knows; the consumer that loses the rename race just moves on. It then reads
  the claimed file and deletes it (or moves it to ``processed_folder``).
* A claimed file that cannot be read or is not a kombu message is moved into the
  ``corrupt/`` subfolder and logged (logger ``config.broker``) instead of crashing.

Hidden names end in ``.tmp`` / ``.claimed``, never in ``.<queue>.msg``, so kombu's own
``_size`` and ``_purge`` (which match ``<anything>.<queue>.msg`` exactly) keep ignoring
in-flight and claimed files and need no override. If the process dies between claiming and
deleting, the hidden ``.claimed`` file stays behind (that one message is not re-delivered).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from queue import Empty
from time import time_ns
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger("config.broker")

#: Subfolder of the queue folder that unreadable message files are moved into.
CORRUPT_FOLDER = "corrupt"


def temp_name(name: str) -> str:
    """Hidden name a message is written under before it is renamed onto ``name``."""
    return f".{name}.tmp"


def claimed_name(name: str) -> str:
    """Hidden, unguessable name a consumer renames message ``name`` to in order to own it."""
    return f".{name}.{uuid.uuid4().hex}.claimed"


def _is_message(payload: Any) -> bool:
    properties = payload.get("properties") if isinstance(payload, dict) else None
    return isinstance(properties, dict) and "delivery_tag" in properties


class Channel(filesystem.Channel):
    """File-system channel with atomic publish and rename-to-claim consume."""

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        """Put ``payload`` onto ``queue``: write a hidden file, then rename it into place."""
        name = f"{time_ns():020d}_{uuid.uuid4()}.{queue}.msg"  # sorts oldest first
        final = os.path.join(self.data_folder_out, name)
        temp = os.path.join(self.data_folder_out, temp_name(name))
        try:
            with open(temp, "xb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """Claim, read and remove the oldest readable message of ``queue``."""
        folder = self.data_folder_in
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(folder, claimed_name(name))
            try:
                os.rename(os.path.join(folder, name), claimed)
            except OSError:
                continue  # another consumer claimed it (or purge removed it) first
            payload = self._read_claimed(claimed, name)
            if payload is not None:
                return payload
        raise Empty()

    def _read_claimed(self, claimed: str, name: str) -> dict[str, Any] | None:
        """Return the message in our ``claimed`` file and drop the file; None if corrupt."""
        try:
            with open(claimed, "rb") as f:
                payload = loads(f.read())
        except Exception as exc:  # whatever is wrong with one file must not kill the worker
            self._set_aside(claimed, name, repr(exc))
            return None
        if not _is_message(payload):
            self._set_aside(claimed, name, "not a kombu message")
            return None
        try:
            if self.store_processed:
                shutil.move(claimed, os.path.join(self.processed_folder, name))
            else:
                os.remove(claimed)
        except OSError:
            logger.exception("Cannot remove consumed broker message %s", claimed)
        return payload

    def _set_aside(self, claimed: str, name: str, reason: str) -> None:
        """Move an unreadable claimed file into ``corrupt/`` (keeping its name) and log it."""
        target = os.path.join(self.data_folder_in, CORRUPT_FOLDER, name)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(claimed, target)
        except OSError:
            logger.exception("Unreadable broker message %s (%s) left at %s", name, reason, claimed)
            return
        logger.error("Unreadable broker message %s (%s) moved to %s", name, reason, target)


class Transport(filesystem.Transport):
    """kombu file-system transport using the crash-safe :class:`Channel`."""

    Channel = Channel
