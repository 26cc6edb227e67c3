-- name: refused-statements
-- description: Statements the gateway refused in a period (by policy, or for want of a durable audit event), newest first
-- parameters: from_time (ISO 8601), to_time (ISO 8601)
SELECT e.time, e.session_id, e.statement_number, e.role, e.subject, e.statement,
       e.deciding_rule, o.sqlstate, o.error
FROM custos_audit.events AS e
JOIN custos_audit.events AS o
  ON o.session_id = e.session_id
 AND o.statement_number = e.statement_number
 AND o.event_type = 'statement_outcome'
WHERE e.event_type = 'statement'
  AND o.status = 'refused'
  AND from_iso8601_timestamp(e.time) BETWEEN from_iso8601_timestamp(?) AND from_iso8601_timestamp(?)
ORDER BY e.time DESC
