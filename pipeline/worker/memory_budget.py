"""An actor's memory for decoded images, bounded in bytes: :class:`MemoryBudget`.

Every image decoded on the host takes bytes from the actor's budget before its decode starts
and gives them back once its pixels are gone, through one :class:`Hold` whose bytes shrink as
the image goes on:

1. granted before the decode: what the decode needs at its peak (estimated from the image's
   header, :meth:`~pipeline.worker.decode.ImageDecoder.reserve_bytes`);
2. after the decode: the decoded image's bytes (``3 * W * H``, pinned on a CUDA actor);
3. after its staging (resized into its row of the network batch, which drops the image): the
   row's bytes where the batch is held in host memory (a CPU actor), else none;
4. released once the model has run on its batch, or as soon as its image is dropped (a decode
   error, a cancelled or failed shard: :meth:`BudgetAccount.close`).

Each shard draws on the budget through its own :class:`BudgetAccount`, opened in the order
the shards take their turns on the model (:class:`~pipeline.worker.model_turns.ModelTurns`).
Grants follow three rules:

- **Order.** A shard's images are granted in plan order (the order its model consumes them),
  shards in arrival order; a request that must wait holds back every later one.
- **Prefetch share.** The oldest open shard (the one on the model, or next to it) may fill the
  whole budget; later shards, which only prefetch, get grants while the total stays within
  :data:`PREFETCH_SHARE` of it, so the oldest always has the rest for itself.
- **Progress.** The oldest shard's next image is granted even when it does not fit, once that
  shard holds no image bytes of its own (only rows of batches that wait for this very image):
  so a shard never waits on itself, and an image larger than the whole budget is decoded
  without any other image of its shard. That is the one way the total can exceed the budget,
  by that image's decode (counted in :attr:`MemoryBudget.overdrafts`).

Why this cannot deadlock: later shards wait for the oldest, never the reverse. The oldest
shard waits only for its own next image (its consumer takes images in plan order, and no
later image of it is granted first); what it holds meanwhile is images being staged, which
the stage thread turns into rows without waiting for anything, and rows; once it holds only
rows, the progress rule grants its image. Later shards hold at most the prefetch share, which
they keep until they become the oldest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Share of the budget that shards queued behind the oldest one may fill by prefetching their
#: first images; the oldest (the one the model serves) can always count on the rest.
PREFETCH_SHARE = 0.5

#: The states of a :class:`Hold`, in the order it passes through them.
DECODING = "decoding"
IMAGE = "image"
ROW = "row"
RELEASED = "released"


class Hold:
    """Bytes of the budget held for one image, from the grant before its decode to the end of
    its batch's model call; see the module docstring. Thread-safe; :meth:`release` is
    idempotent."""

    __slots__ = ("_account", "nbytes", "state")

    def __init__(self, account: BudgetAccount, nbytes: int) -> None:
        self._account = account
        self.nbytes = nbytes
        self.state = DECODING

    def keep(self, nbytes: int, state: str) -> bool:
        """Hold ``nbytes`` from now on, in ``state`` (:data:`IMAGE` after the decode,
        :data:`ROW` after the staging). Returns ``False`` (and holds nothing) when the hold
        was released meanwhile, e.g. its shard failed: the caller drops the pixels."""
        return self._account._keep(self, nbytes, state)

    def release(self) -> None:
        """Give the bytes back (the pixels, or the row, are no longer held)."""
        self._account._release(self)


@dataclass
class _Request:
    row: int
    nbytes: int
    on_grant: Callable[[Hold | None], None]


class BudgetAccount:
    """One shard's draw on a :class:`MemoryBudget` (:meth:`MemoryBudget.open`).

    Every row of the shard that is started must be either requested (:meth:`request`) or
    skipped (:meth:`skip`, e.g. its read failed or its JPEG goes to the GPU): rows are granted
    in order, so a row never resolved would hold back the shard's later images. :meth:`close`
    once the shard is done with its images, failed or not.
    """

    def __init__(self, budget: MemoryBudget, position: int) -> None:
        self._budget = budget
        self.position = position
        self._next_row = 0  # the first row neither granted nor skipped
        self._waiting: dict[int, _Request] = {}
        self._skipped: set[int] = set()
        self._holds: set[Hold] = set()
        self._image_holds = 0  # holds in DECODING or IMAGE state
        self.closed = False

    def request(self, row: int, nbytes: int, on_grant: Callable[[Hold | None], None]) -> None:
        """Ask for ``nbytes`` for ``row``'s decode; ``on_grant(hold)`` is called once granted
        (maybe at once, in this thread; else in the thread that freed the bytes), or
        ``on_grant(None)`` if the row is skipped or the account closes first. The callback
        must be quick."""
        budget = self._budget
        with budget._lock:
            if self.closed or row < self._next_row or row in self._skipped:
                granted = None  # given up on already
            else:
                self._waiting[row] = _Request(row, max(0, int(nbytes)), on_grant)
                granted = budget._grant_locked()
        if granted is None:
            on_grant(None)
        else:
            budget._notify(granted)

    def skip(self, row: int) -> None:
        """``row`` needs nothing from the budget (its read failed, its JPEG goes to the GPU,
        or its shard gave up on it): later rows need not wait for it. A request of it still
        waiting gets ``None``; one granted already is unaffected."""
        budget = self._budget
        with budget._lock:
            if self.closed or row < self._next_row:
                return
            dropped = self._waiting.pop(row, None)
            self._skipped.add(row)
            self._advance()
            granted = budget._grant_locked()
        if dropped is not None:
            dropped.on_grant(None)
        budget._notify(granted)

    def close(self) -> None:
        """The shard is done: requests still waiting get ``None``, bytes held for images and
        rows the shard dropped are released (a decode still running releases its own when it
        ends), and the next shard becomes the oldest. Idempotent."""
        budget = self._budget
        with budget._lock:
            if self.closed:
                return
            self.closed = True
            budget._accounts.remove(self)
            cancelled = list(self._waiting.values())
            self._waiting.clear()
            leftover = 0
            for hold in list(self._holds):
                if hold.state != DECODING:
                    leftover += hold.nbytes
                    self._release_locked(hold)
            granted = budget._grant_locked()
        if leftover:
            logger.debug("released %d bytes the closed shard still held", leftover)
        for request in cancelled:
            request.on_grant(None)
        budget._notify(granted)

    @property
    def held(self) -> int:
        """Bytes this account holds now."""
        with self._budget._lock:
            return sum(hold.nbytes for hold in self._holds)

    # ------------------------------------------------------------------ under the budget's lock
    def _candidate(self) -> _Request | None:
        return self._waiting.get(self._next_row)

    def _advance(self) -> None:
        while self._next_row in self._skipped:
            self._skipped.discard(self._next_row)
            self._next_row += 1

    def _grant(self, request: _Request) -> Hold:
        del self._waiting[request.row]
        self._next_row += 1
        self._advance()
        hold = Hold(self, request.nbytes)
        self._holds.add(hold)
        self._image_holds += 1
        return hold

    def _keep(self, hold: Hold, nbytes: int, state: str) -> bool:
        budget = self._budget
        with budget._lock:
            if hold.state == RELEASED:
                return False
            if self.closed:
                self._release_locked(hold)
                granted = budget._grant_locked()
                kept = False
            else:
                nbytes = max(0, int(nbytes))
                if nbytes > hold.nbytes:  # the header's estimate fell short: count what is
                    logger.debug("image needs %d bytes, %d were granted", nbytes, hold.nbytes)
                budget._add(nbytes - hold.nbytes)
                hold.nbytes = nbytes
                if state == ROW and hold.state != ROW:
                    self._image_holds -= 1
                hold.state = state
                granted = budget._grant_locked()
                kept = True
        budget._notify(granted)
        return kept

    def _release(self, hold: Hold) -> None:
        budget = self._budget
        with budget._lock:
            if hold.state == RELEASED:
                return
            self._release_locked(hold)
            granted = budget._grant_locked()
        budget._notify(granted)

    def _release_locked(self, hold: Hold) -> None:
        self._budget._add(-hold.nbytes)
        if hold.state != ROW:
            self._image_holds -= 1
        hold.state = RELEASED
        hold.nbytes = 0
        self._holds.discard(hold)


class MemoryBudget:
    """``capacity`` bytes for an actor's decoded images, granted to shards as the module
    docstring says. Thread-safe.

    ``held`` is what is held now, ``high_water`` the most ever held, ``overdrafts`` how many
    grants took the total over ``capacity`` (the progress rule).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a memory budget needs at least 1 byte, got {capacity}")
        self.capacity = int(capacity)
        self.prefetch_limit = int(self.capacity * PREFETCH_SHARE)
        self._lock = threading.Lock()
        self._accounts: list[BudgetAccount] = []  # open ones, oldest first
        self._opened = 0
        self._held = 0
        self.high_water = 0
        self.overdrafts = 0

    def open(self) -> BudgetAccount:
        """A new shard's account, after every account opened before it. Open it together with
        the shard's model ticket (under one lock), so that both orders agree."""
        with self._lock:
            account = BudgetAccount(self, self._opened)
            self._opened += 1
            self._accounts.append(account)
            return account

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    @property
    def open_accounts(self) -> int:
        with self._lock:
            return len(self._accounts)

    # ------------------------------------------------------------------ internals
    def _add(self, nbytes: int) -> None:
        self._held += nbytes
        self.high_water = max(self.high_water, self._held)

    def _grant_locked(self) -> list[tuple[Callable[[Hold | None], None], Hold]]:
        """Grant what the rules allow now, oldest account first; the callbacks to call (after
        the lock is released)."""
        granted = []
        for index, account in enumerate(self._accounts):
            oldest = index == 0
            limit = self.capacity if oldest else self.prefetch_limit
            while (request := account._candidate()) is not None:
                fits = self._held + request.nbytes <= limit
                if not fits:
                    if not (oldest and account._image_holds == 0):
                        return granted  # no later request goes first
                    self.overdrafts += 1
                    logger.debug(
                        "decoding an image of %d bytes over the budget (%d of %d held): its "
                        "shard has nothing else to free",
                        request.nbytes,
                        self._held,
                        self.capacity,
                    )
                hold = account._grant(request)
                self._add(request.nbytes)
                granted.append((request.on_grant, hold))
        return granted

    @staticmethod
    def _notify(granted: list[tuple[Callable[[Hold | None], None], Hold]]) -> None:
        for on_grant, hold in granted:
            on_grant(hold)
