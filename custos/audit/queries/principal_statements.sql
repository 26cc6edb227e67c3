-- name: principal-statements
-- description: Every statement one principal (the token's subject) sent in a period, oldest first, with its decision and how it ended
-- parameters: principal (the token's subject), from_time (ISO 8601), to_time (ISO 8601)
SELECT e.time, e.session_id, e.statement_number, e.role, e.statement, e.decision,
       e.deciding_rule, o.status, o.rows, o.duration_ms
FROM custos_audit.events AS e
LEFT JOIN custos_audit.events AS o
  ON o.session_id = e.session_id
 AND o.statement_number = e.statement_number
 AND o.event_type = 'statement_outcome'
WHERE e.event_type = 'statement'
  AND e.subject = ?
  AND from_iso8601_timestamp(e.time) BETWEEN from_iso8601_timestamp(?) AND from_iso8601_timestamp(?)
ORDER BY from_iso8601_timestamp(e.time), e.session_id, e.statement_number
