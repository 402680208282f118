"""Recompute everything from postings and check every invariant — the paired check of the core.

Each check is a function (connection -> findings); all are registered in CHECKS. A finding is one
line a person can act on. An empty list from every check means the books are sound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec
import sqlalchemy as sa

from ledger import chain, chart, holds, statements

FINDINGS_PER_CHECK_MAX = 20


class Finding(msgspec.Struct, frozen=True):
    check: str
    detail: str


def _rows(connection: sa.Connection, sql: str) -> list[sa.Row]:
    return connection.execute(sa.text(sql + f" LIMIT {FINDINGS_PER_CHECK_MAX}")).all()


def entries_balance(c: sa.Connection) -> list[str]:
    return [f"entry {r.entry_id} is off by {r.total} minor units of {r.currency}" for r in _rows(c, """
        SELECT entry_id, currency, sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) AS total
          FROM posting GROUP BY entry_id, currency
        HAVING sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) <> 0""")]


def entries_have_two_legs(c: sa.Connection) -> list[str]:
    return [f"entry {r.id} has {r.legs} legs" for r in _rows(c, """
        SELECT e.id, count(p.entry_id) AS legs FROM journal_entry e LEFT JOIN posting p ON p.entry_id = e.id
         GROUP BY e.id HAVING count(p.entry_id) < 2""")]


def no_orphan_legs(c: sa.Connection) -> list[str]:
    return [f"posting {r.ledger_account_id}/{r.seq}: {r.problem}" for r in _rows(c, """
        SELECT p.ledger_account_id, p.seq,
               CASE WHEN e.id IS NULL THEN 'no journal entry'
                    WHEN a.id IS NULL THEN 'no ledger account'
                    WHEN p.currency <> a.currency THEN 'currency differs from its account'
                    ELSE 'effective time differs from its entry' END AS problem
          FROM posting p LEFT JOIN journal_entry e ON e.id = p.entry_id
          LEFT JOIN ledger_account a ON a.id = p.ledger_account_id
         WHERE e.id IS NULL OR a.id IS NULL OR p.currency <> a.currency OR p.effective_at <> e.effective_at""")]


def cached_balances_match(c: sa.Connection) -> list[str]:
    return [f"{r.name}: cached {r.balance_minor}/{r.posting_count} postings, recomputed {r.total}/{r.n}"
            for r in _rows(c, """
        SELECT a.name, a.balance_minor, a.posting_count,
               COALESCE(s.total, 0) AS total, COALESCE(s.n, 0) AS n
          FROM ledger_account a LEFT JOIN (
               SELECT ledger_account_id, count(*) AS n, max(effective_at) AS latest,
                      sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) AS total
                 FROM posting GROUP BY ledger_account_id) s ON s.ledger_account_id = a.id
         WHERE a.balance_minor <> COALESCE(s.total, 0) OR a.posting_count <> COALESCE(s.n, 0)
            OR a.max_effective_at IS DISTINCT FROM s.latest""")]


def running_balances_match(c: sa.Connection) -> list[str]:
    """Each posting's balance_after, seq and late flag, recomputed from the postings before it."""
    return [f"posting {r.ledger_account_id}/{r.seq}: {r.problem}" for r in _rows(c, """
        SELECT ledger_account_id, seq,
               CASE WHEN seq <> n THEN 'sequence has a gap or repeat'
                    WHEN balance_after_minor <> running THEN 'running balance ' || balance_after_minor
                         || ' should be ' || running
                    ELSE 'late flag is wrong' END AS problem
          FROM (SELECT ledger_account_id, seq, balance_after_minor, late, effective_at,
                       row_number() OVER w AS n,
                       sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END) OVER w AS running,
                       max(effective_at) OVER (PARTITION BY ledger_account_id ORDER BY seq
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
                  FROM posting WINDOW w AS (PARTITION BY ledger_account_id ORDER BY seq)) x
         WHERE seq <> n OR balance_after_minor <> running
            OR late <> COALESCE(effective_at < before, false)""")]


def lateness_bounds_match(c: sa.Connection) -> list[str]:
    """The cached max_lateness_us that bounds the as-of scan (migration 0004), recomputed."""
    return [f"{r.name}: cached max lateness {r.max_lateness_us} µs, recomputed {r.lateness_us} µs"
            for r in _rows(c, """
        SELECT a.name, a.max_lateness_us, COALESCE(l.lateness_us, 0) AS lateness_us
          FROM ledger_account a LEFT JOIN ledger_account_lateness l ON l.ledger_account_id = a.id
         WHERE a.max_lateness_us <> COALESCE(l.lateness_us, 0)""")]


def checkpoints_match(c: sa.Connection) -> list[str]:
    """Every balance checkpoint (migration 0005), recomputed: each posting falls into the first checkpoint
    at or after its effective time, and a checkpoint holds the running sum of those up to it."""
    return [f"{r.name} at checkpoint {r.at.isoformat()}: stored {r.stored}, recomputed {r.expected}"
            for r in _rows(c, """
        WITH k AS (SELECT array_agg(at ORDER BY at) AS ats FROM ledger_checkpoint),
        d AS (SELECT k.ats[width_bucket(p.effective_at - interval '1 microsecond', k.ats) + 1] AS at,
                     p.ledger_account_id AS id,
                     sum(CASE p.side WHEN 'D' THEN p.amount_minor ELSE -p.amount_minor END) AS delta
                FROM posting p CROSS JOIN k
               WHERE p.effective_at <= k.ats[cardinality(k.ats)]
               GROUP BY 1, 2),
        e AS (SELECT c.at, a.id, sum(COALESCE(d.delta, 0)) OVER (PARTITION BY a.id ORDER BY c.at) AS expected
                FROM ledger_checkpoint c CROSS JOIN (SELECT DISTINCT id FROM d) a
                LEFT JOIN d ON d.at = c.at AND d.id = a.id)
        SELECT COALESCE(e.at, b.at) AS at, l.name, COALESCE(b.balance_minor, 0) AS stored,
               COALESCE(e.expected, 0) AS expected
          FROM e FULL JOIN ledger_checkpoint_balance b ON b.at = e.at AND b.ledger_account_id = e.id
          LEFT JOIN ledger_account l ON l.id = COALESCE(e.id, b.ledger_account_id)
         WHERE COALESCE(b.balance_minor, 0) <> COALESCE(e.expected, 0)""")]


def custody_equals_investors(c: sa.Connection) -> list[str]:
    return [f"account {r.account_id}: custody {r.custody} but investors {r.investors} (minor units)"
            for r in _rows(c, f"""
        SELECT i.account_id, cu.balance_minor AS custody, -inv.balance_minor AS investors
          FROM investment_account i
          JOIN ledger_account cu ON cu.name = {chart.custody_sql("i.account_id")}
          JOIN ledger_account inv ON inv.name = {chart.investors_sql("i.account_id")}
         WHERE cu.balance_minor <> -inv.balance_minor""")]  # noqa: S608 — ledger.chart's constants


def books_balance(c: sa.Connection) -> list[str]:
    return [f"{r.currency}: debits exceed credits by {r.total} minor units" for r in _rows(c, """
        SELECT currency, sum(balance_minor) AS total FROM ledger_account GROUP BY currency
        HAVING sum(balance_minor) <> 0""")]


def reversals_mirror(c: sa.Connection) -> list[str]:
    return [f"reversal {r.id} does not mirror entry {r.reverses_entry_id}" for r in _rows(c, """
        SELECT r.id, r.reverses_entry_id FROM journal_entry r
         WHERE r.reverses_entry_id IS NOT NULL AND EXISTS (
               (SELECT ledger_account_id, CASE side WHEN 'D' THEN 'C' ELSE 'D' END, amount_minor
                  FROM posting WHERE entry_id = r.reverses_entry_id
                EXCEPT ALL
                SELECT ledger_account_id, side, amount_minor FROM posting WHERE entry_id = r.id)
               UNION ALL
               (SELECT ledger_account_id, side, amount_minor FROM posting WHERE entry_id = r.id
                EXCEPT ALL
                SELECT ledger_account_id, CASE side WHEN 'D' THEN 'C' ELSE 'D' END, amount_minor
                  FROM posting WHERE entry_id = r.reverses_entry_id))""")]


def as_of_matches_recomputation(c: sa.Connection) -> list[str]:
    """The as-of shortcut against a plain sum, at every distinct effective time of a sample of accounts."""
    return [f"{r.name} as of {r.at}: as-of {r.fast} but the postings sum to {r.slow}" for r in _rows(c, """
        WITH sample AS (SELECT id, name FROM ledger_account ORDER BY posting_count DESC, id LIMIT 50),
             times AS (SELECT DISTINCT s.id, s.name, p.effective_at AS at
                         FROM sample s JOIN posting p ON p.ledger_account_id = s.id)
        SELECT t.name, t.at, ledger_balance_as_of(t.id, t.at) AS fast,
               (SELECT COALESCE(sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END), 0)
                  FROM posting WHERE ledger_account_id = t.id AND effective_at <= t.at) AS slow
          FROM times t
         WHERE ledger_balance_as_of(t.id, t.at) <>
               (SELECT COALESCE(sum(CASE side WHEN 'D' THEN amount_minor ELSE -amount_minor END), 0)
                  FROM posting WHERE ledger_account_id = t.id AND effective_at <= t.at)""")]


# The triggers that guard the books (migrations 0001-0010): each must exist and be enabled. A disabled one lets
# rows change that must not; the hash chains show what changed, this check shows the door was opened.
GUARD_TRIGGERS = {
    "posting": ("posting_append_only", "posting_no_truncate", "posting_apply"),
    "journal_entry": ("journal_entry_append_only", "journal_entry_no_truncate", "journal_entry_balanced"),
    "account_event": ("account_event_append_only",),
    "ledger_account": ("ledger_account_no_delete", "ledger_account_no_truncate", "ledger_account_guard_cache",
                       "ledger_account_new_is_empty"),
    "posting_batch": ("posting_batch_apply",),
    "distribution": ("distribution_append_only", "distribution_no_truncate"),
    "ledger_checkpoint": ("ledger_checkpoint_guard",),
    "ledger_anchor": ("ledger_anchor_append_only", "ledger_anchor_no_truncate"),
    "ledger_anchor_head": ("ledger_anchor_head_append_only", "ledger_anchor_head_no_truncate"),
    "investor_statement": ("investor_statement_check", "investor_statement_append_only",
                           "investor_statement_no_truncate"),
    **holds.GUARD_TRIGGERS,
}


def guards_enabled(c: sa.Connection) -> list[str]:
    enabled = {(r.table, r.name): r.tgenabled for r in c.execute(sa.text("""
        SELECT t.tgrelid::regclass::text AS table, t.tgname AS name, t.tgenabled::text AS tgenabled
          FROM pg_trigger t WHERE NOT t.tgisinternal"""))}
    problems = []
    for table, names in GUARD_TRIGGERS.items():
        for name in names:
            state = enabled.get((table, name))
            if state is None:
                problems.append(f"trigger {name} on {table} is missing")
            elif state not in ("O", "A"):
                problems.append(f"trigger {name} on {table} is disabled ({state!r})")
    return problems


CHECKS: tuple[Callable[[sa.Connection], list[str]], ...] = (
    entries_balance, entries_have_two_legs, no_orphan_legs, cached_balances_match, running_balances_match,
    lateness_bounds_match, checkpoints_match, custody_equals_investors, books_balance, reversals_mirror,
    as_of_matches_recomputation, guards_enabled, statements.statements_match, *holds.CHECKS,
)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    counts: dict[str, int]
    checks: dict[str, int]  # check -> number of findings (capped)
    findings: list[Finding]
    notes: list[str] = []


def verify(engine: sa.Engine, progress: Callable[[str], None] | None = None, *, public_key: bytes | None = None,
           outside_anchors: Iterable[dict[str, object]] | None = None) -> Report:
    """Run every check in one REPEATABLE READ snapshot, so concurrent writers cannot cause false alarms; then the
    hash chains and anchors (`ledger.chain`), signatures checked with `public_key` (Ed25519, raw 32 bytes) and the
    anchors compared with an outside copy of the anchors file when given."""
    findings: list[Finding] = []
    checks: dict[str, int] = {}
    with engine.connect() as connection:
        connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        counts = dict(connection.execute(sa.text("""
            SELECT 'investment_accounts', count(*) FROM investment_account UNION ALL
            SELECT 'ledger_accounts', count(*) FROM ledger_account UNION ALL
            SELECT 'entries', count(*) FROM journal_entry UNION ALL
            SELECT 'postings', count(*) FROM posting""")).all())
        for check in CHECKS:
            if progress:
                progress(check.__name__)
            found = check(connection)
            checks[check.__name__] = len(found)
            findings.extend(Finding(check.__name__, detail) for detail in found)
        if progress:
            progress("hash_chains_and_anchors")
        chains = chain.check(connection, public_key=public_key, outside=outside_anchors)
        checks["hash_chains_and_anchors"] = len(chains.findings)
        findings.extend(Finding("hash_chains_and_anchors", detail) for detail in chains.findings)
        counts["anchors"] = chains.anchors_checked
        connection.rollback()
    return Report(ok=not findings, counts=counts, checks=checks, findings=findings, notes=chains.notes)
