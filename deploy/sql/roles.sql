-- One database role per service (docs/deploy.md, "Database roles"). Run it as the role that
-- owns the schema (the one `python -m shared.db.migrate` runs as), connected to the dropwatch
-- database, after the migrations and again after every release that migrates: it is
-- idempotent (roles are created only when missing; grants repeat harmlessly). Roles are
-- cluster-wide, so it needs CREATEROLE once; set each role's password separately:
--   ALTER ROLE dropwatch_poller PASSWORD '...';   (likewise feed and maintenance)
--
--   dropwatch_poller       talks to the internet: reads and writes its six tables only; no
--                          DDL, no TRUNCATE, nothing of maintenance's tables.
--   dropwatch_feed         reads what it serves; every transaction read-only by default.
--   dropwatch_maintenance  creates and drops day partitions of drop_events, which PostgreSQL
--                          allows only to their owner, so it is a member of the owner role.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['dropwatch_poller', 'dropwatch_feed', 'dropwatch_maintenance']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', name);
        END IF;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), name);
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', name);
    END LOOP;
    -- Maintenance acts as the owner (partition DDL); the others never do.
    EXECUTE format('GRANT %I TO dropwatch_maintenance', current_user);
END
$$;

-- Nobody but the owner creates objects in the schema (the default since PostgreSQL 15).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The poller: the buckets it leases, the snapshot it diffs, the events it writes (a day
-- partition is reached through its parent, whose grants apply), the venues it upserts. It
-- cannot create a day partition: the daily maintenance run creates them for the live window
-- (migrate does on a fresh database) before the poller needs them.
GRANT SELECT, INSERT, UPDATE, DELETE
    ON discovery_buckets, open_slots, baseline_slots, drop_events, venues
    TO dropwatch_poller;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO dropwatch_poller;
-- Which days are final (their partition dropped for good, never to be recreated).
GRANT SELECT ON day_figures TO dropwatch_poller;
-- The last successful maintenance run, which the poller exports for the alert.
GRANT SELECT ON maintenance_runs TO dropwatch_poller;
-- The market's request budget, claimed by every replica (one upsert per grant), and the
-- release windows maintenance learned, which the scheduler reads but never writes.
GRANT SELECT, INSERT, UPDATE ON request_budget TO dropwatch_poller;
GRANT SELECT ON release_windows TO dropwatch_poller;
GRANT SELECT ON alembic_version TO dropwatch_poller, dropwatch_feed;

-- The feed: reads only, and its sessions start read-only.
GRANT SELECT ON open_slots, venues, discovery_buckets TO dropwatch_feed;
ALTER ROLE dropwatch_feed SET default_transaction_read_only = on;
ALTER ROLE dropwatch_feed CONNECTION LIMIT 120;

-- The change cursor (#15): ListChanges and WatchDrops read the events in commit order (a day
-- partition through its parent, whose grants apply) and the retention floor the maintenance
-- job records when it drops a day (it acts as the owner; the grant says so explicitly).
GRANT SELECT ON drop_events, change_floor TO dropwatch_feed;
GRANT SELECT, INSERT, UPDATE ON change_floor TO dropwatch_maintenance;
