"""Every Redis key name of the bridge: the only place a key string is built.

Key names are a deployed contract (a new version must read what the previous one wrote): change
none without a migration. A shop's keys are `cb:{shop}:...`; the braces are a cluster hash tag,
so one shop's keys live on one node and a MULTI can span them. Process-wide keys are `cb:...`
without a tag.
"""

from __future__ import annotations

import functools

# Shops the bridge has seen (a set): the worker's ticker and /metrics walk it.
SHOPS_KEY = "cb:shops"
# Counters of rejections naming shops the bridge does not know go here (bounded field names);
# /metrics exports them under the shop label "other".
REJECTED_KEY = "cb:rejected"
# Shops erased lately (a zset: shop -> when, ms): the sweep removes their counters again for a
# while, in case a busy worker's tally wrote some after the erasure (compliance/erasure.py).
ERASED_SHOPS_KEY = "cb:erased"
# Set while a sweep job is known to be scheduled (worker/sweep.py): a worker that finds it gone
# starts a new chain.
SWEEP_SCHEDULED_KEY = "cb:sweep:scheduled"
# The volume check (monitoring/monitor.py): one run at a time, its chain, its last run (epoch ms,
# also a metric).
CHECK_LOCK_KEY = "cb:check:lock"
CHECK_SCHEDULED_KEY = "cb:check:scheduled"
CHECK_LAST_RUN_KEY = "cb:check:last"
# Set until the next reconciliation is due (backfill/reconcile.py).
RECONCILE_LOCK_KEY = "cb:reconcile:next"
# Wrong ops console tokens per client address (a keyed hash of it), each key expiring with its
# window (web/ops/auth.py).
OPS_LOGIN_FAILURES_PREFIX = "cb:ops:login:"
# Where a customer's export (customers/data_request) is kept, after the shop's prefix.
EXPORT_SEGMENT = "gdpr:"


class Keys:
    """All key names for one shop."""

    def __init__(self, shop: str) -> None:
        p = f"cb:{{{shop}}}:"
        self.prefix = p
        self.inbound = p + "in"
        self.inbound_work = p + "in:work"
        self.drain_flag = p + "in:flag"
        self.drain_lease = p + "in:lease"
        # Drains that found the work list left by one that did not finish (a crash, a timeout)
        # and the batch size last tried on it: a poison batch is split until its culprit is
        # alone, then parked (worker/drain.py).
        self.drain_tries = p + "in:tries"
        self.outbox = p + "out"
        self.outbox_work = p + "out:work"
        self.deliver_flag = p + "out:flag"
        self.deliver_lease = p + "out:lease"
        self.stats = p + "stats"
        self.parked = p + "parked"  # legacy list; dead letters live in `dlq` (store/deadletters.py)
        # Dead letters (delivery/deadletters.py): id -> record, and id -> last error time (ms).
        self.dlq = p + "dlq"
        self.dlq_index = p + "dlq:idx"
        # Delivery (issue 4): people whose calls wait for a retry, and the shop's pause.
        self.out_due = p + "out:due"  # zset person hash -> when its held calls go again (ms)
        self.out_meta = p + "out:meta"  # hash person hash -> retry state (attempts, first error)
        self.out_held = p + "out:held:"  # + person hash: that person's calls, in order
        self.paused = p + "paused"  # pause time (ms) while Pipelines refuses the write key
        self.paused_key = p + "paused:key"  # fingerprint of the write key that was refused
        self.paused_probe = p + "paused:probe"  # set while a probe is not yet due
        # A lease held by an erasure of the shop's data (erasure.py), from before it waits for
        # the delivery lease until it is done: the deliverer stands aside when it sees it.
        self.erasing = p + "out:erasing"
        # Compliance requests (issue 7) committed with their batch, run after it, then removed.
        self.compliance = p + "compliance"
        # Customer exports (customers/data_request), each under its request's id.
        self.exports = p + EXPORT_SEGMENT
        # The volume check (issue 6): alert state (`{event}:{kind}` -> since/sent), the last
        # check's window and baseline per event, and each key event's last-seen time (ms).
        self.alerts = p + "alerts"
        self.volume_gauges = p + "volume"
        self.last_seen = p + "lastseen"
        # Set for a minute after identity's housekeeping ran for the shop (worker/sweep.py).
        self.housekeeping = p + "house"
        # The backfill's product id -> product type cache (backfill/run.py).
        self.product_types = p + "product_types"
        # issue 17 (products/sync.py): the product refresh's watermark (the newest `updatedAt`
        # read), and a marker set until the next refresh is due. The product cache itself is
        # shop state (`st:product:<id>`, `st:products:wanted`).
        self.product_sync = p + "products:sync"
        self.product_sync_due = p + "products:sync:due"
        # A refresh pass under way: where its next page starts (store/products.py).
        self.product_sync_pass = p + "products:sync:pass"

        # The ops console (issue 18, store/ops.py): the last webhooks processed (a capped
        # list), alerts that ended (a capped list), and when calls were last delivered.
        self.webhook_log = p + "ops:hooks"
        self.alert_history = p + "ops:alerts"
        self.ops_marks = p + "ops:last"
        self.ledger_prefix = p + "ops:calls:"

    def pixel_limits(self, window: int) -> str:
        """The collector's request counts in one rate-limit window (issue 17): a hash of
        `ip:<hash>` and `c:<hash>` -> requests, expiring soon after the window."""
        return f"{self.prefix}px:rl:{window}"

    def seen(self, webhook_id: str) -> str:
        return f"{self.prefix}seen:{webhook_id}"

    def claim(self, webhook_id: str) -> str:
        """The token of the queued copy that claimed the webhook id (`Store.accept`). A key of
        its own, not the seen-marker: a worker of an older version, which reads any seen-marker
        as "processed", still processes what a newer web claimed (a rollback loses nothing)."""
        return f"{self.prefix}claim:{webhook_id}"

    def state(self, name: str) -> str:
        return f"{self.prefix}st:{name}"

    def volume_fine(self, event: str) -> str:
        """The event's 5-minute count buckets (monitoring/volume.py)."""
        return f"{self.prefix}vol5m:{event}"

    def volume_coarse(self, event: str) -> str:
        """The event's hourly count buckets (monitoring/volume.py)."""
        return f"{self.prefix}vol1h:{event}"

    def ledger(self, person_hash: str) -> str:
        """One person's recent calls and their outcomes (store/ops.py), named by the keyed
        person hash, so an erasure finds it by name."""
        return self.ledger_prefix + person_hash

    def webhook_buckets(self, size: str, day: int) -> str:
        """Webhooks processed per bucket (`5m` or `1h`) during one UTC day (epoch day number):
        a key per day, expiring on its own, so nothing needs trimming."""
        return f"{self.prefix}ops:wh{size}:{day}"

    def export(self, request_id: str) -> str:
        """One customer export, named by its data request's id (or its webhook's)."""
        return self.exports + request_id

    def held(self, person_hash: str) -> str:
        """One waiting person's calls, in order (the take script builds the same name from the
        `out_held` prefix it is given)."""
        return self.out_held + person_hash

    def backfill(self, job: str) -> str:
        """A backfill job's checkpoint hash."""
        return f"{self.prefix}backfill:{job}"

    def backfill_categories(self, job: str) -> str:
        """The job's per-customer category dates seen so far (a resumed run loses none)."""
        return self.backfill(job) + ":categories"

    def backfill_people(self, job: str) -> str:
        """The job's customers counted (a HyperLogLog)."""
        return self.backfill(job) + ":people"


@functools.lru_cache(maxsize=4096)
def shop_keys(shop: str) -> Keys:
    """`Keys(shop)`, built once per shop: the request path needs them for every webhook."""
    return Keys(shop)


def ops_login_failures(client: str) -> str:
    """Wrong console logins from one client (`client`: a keyed hash of its address)."""
    return OPS_LOGIN_FAILURES_PREFIX + client
