"""The SQL of the PostgreSQL store's aggregate triggers (sqlite_stats.py's, in PL/pgSQL), as two
migrations of pg_migrations.py wrote them: by row (version 1), then by statement (version 3).
"""

from __future__ import annotations

V1_TRIGGERS = """
CREATE FUNCTION stats_planned(id TEXT, purpose TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(purpose, '') = '' AND strpos(id, '/escalate-') = 0
$$;
CREATE FUNCTION stats_escalation(id TEXT, purpose TEXT) RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE AS $$
    SELECT strpos(id, '/escalate-') > 0 OR left(coalesce(purpose, ''), 11) = 'escalation:'
$$;
CREATE FUNCTION stats_micros(at TEXT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT (extract(epoch FROM at::timestamptz) * 1000000)::BIGINT
$$;

CREATE FUNCTION stats_delivery_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dl INTEGER := (NEW.state = 'delivered')::INTEGER;
    fl INTEGER := (NEW.state = 'failed')::INTEGER;
    st INTEGER := (NEW.state = 'stopped')::INTEGER;
    op INTEGER := (NEW.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        dl := dl - (OLD.state = 'delivered')::INTEGER;
        fl := fl - (OLD.state = 'failed')::INTEGER;
        st := st - (OLD.state = 'stopped')::INTEGER;
        op := op - (OLD.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER;
        UPDATE stats_channel SET delivered = delivered + dl, failures = failures + fl,
            "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id AND channel = NEW.channel;
        UPDATE stats_warning SET delivered = delivered + dl, failures = failures + fl,
            "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id;
    ELSIF stats_planned(NEW.id, NEW.purpose) THEN
        INSERT INTO stats_channel AS c
            (warning_id, channel, planned, delivered, failures, "open", stopped)
        VALUES (NEW.warning_id, NEW.channel, 1, dl, fl, op, st)
        ON CONFLICT (warning_id, channel) DO UPDATE SET planned = c.planned + 1,
            delivered = c.delivered + dl, failures = c.failures + fl,
            "open" = c."open" + op, stopped = c.stopped + st;
        UPDATE stats_warning SET planned = planned + 1, delivered = delivered + dl,
            failures = failures + fl, "open" = "open" + op, stopped = stopped + st
        WHERE warning_id = NEW.warning_id;
    ELSIF stats_escalation(NEW.id, NEW.purpose) THEN
        INSERT INTO stats_channel AS c (warning_id, channel, escalation_deliveries)
        VALUES (NEW.warning_id, NEW.channel, 1)
        ON CONFLICT (warning_id, channel) DO UPDATE
        SET escalation_deliveries = c.escalation_deliveries + 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_delivery_insert AFTER INSERT ON deliveries
FOR EACH ROW EXECUTE FUNCTION stats_delivery_row();
CREATE TRIGGER stats_delivery_state AFTER UPDATE OF state ON deliveries
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND stats_planned(NEW.id, NEW.purpose))
EXECUTE FUNCTION stats_delivery_row();

CREATE FUNCTION stats_delivery_times() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retried INTEGER := greatest(0, NEW.tries - 1);
    reached BIGINT := NEW.reached_us;
    ended BIGINT := NEW.ended_us;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        retried := retried - greatest(0, OLD.tries - 1);
        IF OLD.reached_us IS NOT NULL THEN reached := NULL; END IF;
        IF OLD.ended_us IS NOT NULL THEN ended := NULL; END IF;
    END IF;
    UPDATE stats_channel SET retries = retries + retried,
        first_us = CASE WHEN reached IS NOT NULL THEN least(first_us, reached) ELSE first_us END,
        last_us = CASE WHEN ended IS NOT NULL THEN greatest(last_us, ended) ELSE last_us END
    WHERE warning_id = NEW.warning_id AND channel = NEW.channel;
    UPDATE stats_warning SET retries = retries + retried,
        first_us = CASE WHEN reached IS NOT NULL THEN least(first_us, reached) ELSE first_us END,
        last_us = CASE WHEN ended IS NOT NULL THEN greatest(last_us, ended) ELSE last_us END
    WHERE warning_id = NEW.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_delivery_times AFTER INSERT OR UPDATE ON stats_delivery
FOR EACH ROW EXECUTE FUNCTION stats_delivery_times();

CREATE FUNCTION stats_coverage_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE stats_warning SET townships = townships + 1 WHERE warning_id = NEW.warning_id;
        UPDATE stats_district SET townships = townships + 1
        WHERE warning_id = NEW.warning_id AND district = left(NEW.township, 6);
    ELSE
        at := stats_micros(NEW.covered_at);
        UPDATE stats_warning SET covered = covered + 1, covered_us = greatest(covered_us, at)
        WHERE warning_id = NEW.warning_id;
        UPDATE stats_district SET covered = covered + 1, covered_us = greatest(covered_us, at)
        WHERE warning_id = NEW.warning_id AND district = left(NEW.township, 6);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_insert AFTER INSERT ON coverage
FOR EACH ROW EXECUTE FUNCTION stats_coverage_row();
CREATE TRIGGER stats_coverage_cover AFTER UPDATE OF covered_at ON coverage
FOR EACH ROW WHEN (OLD.covered_at IS NULL AND NEW.covered_at IS NOT NULL)
EXECUTE FUNCTION stats_coverage_row();
"""

# The aggregates as statement-level triggers over transition tables: a batch's statement of
# 14,000 deliveries updates a warning's row once, not 14,000 times (row triggers updated the
# same row once per delivery, and each update walked the row's growing chain of versions in
# that transaction: quadratic in the fan-out). Transition tables take no column list and one
# event each, hence a trigger per event that filters what changed. The functions scan again:
# a batch turns sequential scans off for its statements (pg_write.run), and the transition
# tables and temporary tables here have no index to use instead.
V3_STATEMENT_TRIGGERS = """
DROP TRIGGER stats_delivery_insert ON deliveries;
DROP TRIGGER stats_delivery_state ON deliveries;
DROP TRIGGER stats_delivery_times ON stats_delivery;
DROP TRIGGER stats_coverage_insert ON coverage;
DROP TRIGGER stats_coverage_cover ON coverage;
DROP FUNCTION stats_delivery_row();
DROP FUNCTION stats_delivery_times();
DROP FUNCTION stats_coverage_row();

CREATE FUNCTION stats_deliveries_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    INSERT INTO stats_channel AS c
        (warning_id, channel, planned, delivered, failures, "open", stopped,
         escalation_deliveries)
    SELECT warning_id, channel,
        count(*) FILTER (WHERE planned),
        count(*) FILTER (WHERE planned AND state = 'delivered'),
        count(*) FILTER (WHERE planned AND state = 'failed'),
        count(*) FILTER (WHERE planned AND state NOT IN ('delivered', 'failed', 'stopped')),
        count(*) FILTER (WHERE planned AND state = 'stopped'),
        count(*) FILTER (WHERE NOT planned AND escalation)
    FROM (
        SELECT warning_id, channel, state, stats_planned(id, purpose) AS planned,
            stats_escalation(id, purpose) AS escalation
        FROM new_rows
    ) AS n
    WHERE planned OR escalation
    GROUP BY warning_id, channel
    ON CONFLICT (warning_id, channel) DO UPDATE SET planned = c.planned + excluded.planned,
        delivered = c.delivered + excluded.delivered,
        failures = c.failures + excluded.failures, "open" = c."open" + excluded."open",
        stopped = c.stopped + excluded.stopped,
        escalation_deliveries = c.escalation_deliveries + excluded.escalation_deliveries;
    UPDATE stats_warning AS w SET planned = w.planned + n.planned,
        delivered = w.delivered + n.dl, failures = w.failures + n.fl,
        "open" = w."open" + n.op, stopped = w.stopped + n.st
    FROM (
        SELECT warning_id, count(*) AS planned,
            count(*) FILTER (WHERE state = 'delivered') AS dl,
            count(*) FILTER (WHERE state = 'failed') AS fl,
            count(*) FILTER (WHERE state NOT IN ('delivered', 'failed', 'stopped')) AS op,
            count(*) FILTER (WHERE state = 'stopped') AS st
        FROM new_rows WHERE stats_planned(id, purpose) GROUP BY warning_id
    ) AS n
    WHERE w.warning_id = n.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_deliveries_insert AFTER INSERT ON deliveries
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_deliveries_inserted();

CREATE FUNCTION stats_deliveries_moved() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_moved (
        warning_id TEXT, channel TEXT, dl BIGINT, fl BIGINT, op BIGINT, st BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_moved;
    INSERT INTO stats_moved
    SELECT n.warning_id, n.channel,
        sum((n.state = 'delivered')::INTEGER - (o.state = 'delivered')::INTEGER),
        sum((n.state = 'failed')::INTEGER - (o.state = 'failed')::INTEGER),
        sum((n.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER
            - (o.state NOT IN ('delivered', 'failed', 'stopped'))::INTEGER),
        sum((n.state = 'stopped')::INTEGER - (o.state = 'stopped')::INTEGER)
    FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
    WHERE o.state IS DISTINCT FROM n.state AND stats_planned(n.id, n.purpose)
    GROUP BY n.warning_id, n.channel;
    UPDATE stats_channel AS c SET delivered = c.delivered + m.dl,
        failures = c.failures + m.fl, "open" = c."open" + m.op, stopped = c.stopped + m.st
    FROM stats_moved AS m WHERE c.warning_id = m.warning_id AND c.channel = m.channel;
    UPDATE stats_warning AS w SET delivered = w.delivered + m.dl,
        failures = w.failures + m.fl, "open" = w."open" + m.op, stopped = w.stopped + m.st
    FROM (
        SELECT warning_id, sum(dl) AS dl, sum(fl) AS fl, sum(op) AS op, sum(st) AS st
        FROM stats_moved GROUP BY warning_id
    ) AS m
    WHERE w.warning_id = m.warning_id;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_deliveries_moved AFTER UPDATE ON deliveries
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_deliveries_moved();

CREATE FUNCTION stats_times_apply() RETURNS void LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_channel AS c SET retries = c.retries + t.retried,
        first_us = least(c.first_us, t.reached), last_us = greatest(c.last_us, t.ended)
    FROM (
        SELECT warning_id, channel, sum(retried) AS retried, min(reached) AS reached,
            max(ended) AS ended
        FROM stats_times GROUP BY warning_id, channel
    ) AS t
    WHERE c.warning_id = t.warning_id AND c.channel = t.channel;
    UPDATE stats_warning AS w SET retries = w.retries + t.retried,
        first_us = least(w.first_us, t.reached), last_us = greatest(w.last_us, t.ended)
    FROM (
        SELECT warning_id, sum(retried) AS retried, min(reached) AS reached,
            max(ended) AS ended
        FROM stats_times GROUP BY warning_id
    ) AS t
    WHERE w.warning_id = t.warning_id;
END $$;

CREATE FUNCTION stats_times_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_times (
        warning_id TEXT, channel TEXT, retried BIGINT, reached BIGINT, ended BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_times;
    INSERT INTO stats_times
    SELECT warning_id, channel, greatest(0, tries - 1), reached_us, ended_us FROM new_rows;
    PERFORM stats_times_apply();
    RETURN NULL;
END $$;

CREATE FUNCTION stats_times_updated() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS stats_times (
        warning_id TEXT, channel TEXT, retried BIGINT, reached BIGINT, ended BIGINT
    ) ON COMMIT DROP;
    DELETE FROM stats_times;
    INSERT INTO stats_times
    SELECT n.warning_id, n.channel, greatest(0, n.tries - 1) - greatest(0, o.tries - 1),
        CASE WHEN o.reached_us IS NULL THEN n.reached_us END,
        CASE WHEN o.ended_us IS NULL THEN n.ended_us END
    FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id;
    PERFORM stats_times_apply();
    RETURN NULL;
END $$;
CREATE TRIGGER stats_times_insert AFTER INSERT ON stats_delivery
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_times_inserted();
CREATE TRIGGER stats_times_update AFTER UPDATE ON stats_delivery
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_times_updated();

CREATE FUNCTION stats_coverage_inserted() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_warning AS w SET townships = w.townships + n.count
    FROM (SELECT warning_id, count(*) FROM new_rows GROUP BY warning_id) AS n
    WHERE w.warning_id = n.warning_id;
    UPDATE stats_district AS d SET townships = d.townships + n.count
    FROM (
        SELECT warning_id, left(township, 6) AS district, count(*)
        FROM new_rows GROUP BY 1, 2
    ) AS n
    WHERE d.warning_id = n.warning_id AND d.district = n.district;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_insert AFTER INSERT ON coverage
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_coverage_inserted();

CREATE FUNCTION stats_coverage_covered() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = on AS $$
BEGIN
    UPDATE stats_warning AS w SET covered = w.covered + n.count,
        covered_us = greatest(w.covered_us, n.at)
    FROM (
        SELECT n.warning_id, count(*), max(stats_micros(n.covered_at)) AS at
        FROM new_rows AS n JOIN old_rows AS o
            ON o.warning_id = n.warning_id AND o.township = n.township
        WHERE o.covered_at IS NULL AND n.covered_at IS NOT NULL
        GROUP BY n.warning_id
    ) AS n
    WHERE w.warning_id = n.warning_id;
    UPDATE stats_district AS d SET covered = d.covered + n.count,
        covered_us = greatest(d.covered_us, n.at)
    FROM (
        SELECT n.warning_id, left(n.township, 6) AS district, count(*),
            max(stats_micros(n.covered_at)) AS at
        FROM new_rows AS n JOIN old_rows AS o
            ON o.warning_id = n.warning_id AND o.township = n.township
        WHERE o.covered_at IS NULL AND n.covered_at IS NOT NULL
        GROUP BY 1, 2
    ) AS n
    WHERE d.warning_id = n.warning_id AND d.district = n.district;
    RETURN NULL;
END $$;
CREATE TRIGGER stats_coverage_cover AFTER UPDATE ON coverage
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION stats_coverage_covered();
"""
