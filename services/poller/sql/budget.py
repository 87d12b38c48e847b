"""The market's shared request budget: a token bucket row (services/poller/budget.py)."""

from __future__ import annotations

from sqlalchemy import text

# One claim is ONE statement: refill the market's bucket by the database clock (so replicas'
# clocks do not matter), take up to :want whole tokens of what is there, and return the grant
# (`last_grant`) and what is left. The first claim of a market creates its row full. A clock
# that steps back refills nothing until it has caught up (refilled_at never moves backwards).
_AVAILABLE = (
    "least(CAST(:burst AS float8), b.tokens + CAST(:rate AS float8)"
    " * greatest(0, extract(epoch FROM excluded.refilled_at - b.refilled_at)))"
)
# Never negative, even from a row written by hand with negative tokens.
_GRANT = f"greatest(0, least(CAST(:want AS integer), floor({_AVAILABLE})::integer))"
CLAIM_BUDGET = text(
    f"""
    INSERT INTO request_budget AS b (market, tokens, refilled_at, last_grant, granted_total)
    SELECT :market, CAST(:burst AS float8) - g, clock_timestamp(), g, g
    FROM (SELECT least(CAST(:want AS integer), floor(CAST(:burst AS float8))::integer) AS g) s
    ON CONFLICT (market) DO UPDATE SET
        tokens = {_AVAILABLE} - {_GRANT},
        refilled_at = greatest(b.refilled_at, excluded.refilled_at),
        last_grant = {_GRANT},
        granted_total = b.granted_total + {_GRANT}
    RETURNING last_grant, tokens
    """
)
