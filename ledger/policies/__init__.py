"""The accounting policies: pure functions from the facts (and the balances they need) to entry drafts.

No I/O here: the callers (`integration.booking`, `ledger.distribution`, `readside.reports`) read what a policy needs,
call it, and post what it returns. One module per rule:
- `flows`: what counts as a flow (money moved by the investor) rather than a return;
- `fee`: the monthly performance fee with the high-water mark;
- `late_facts`: the offset that keeps a trued-up day's closing balance when a fact for it arrives late;
- `trades`: the trade booking (closed, open, closed twice);
- `true_up`: the daily true-up to the engine's closing balance;
- `balance_update`: the adjustment to the engine's balance as of `occurred_at`.
The Dr / Cr of each entry is `ledger.rules`.
"""
