-- name: approvals
-- description: Approvals requested in a period, oldest first: the statement, who asked, who decided what and when (pending ones too)
-- parameters: from_time (ISO 8601), to_time (ISO 8601)
SELECT r.approval_id, r.time AS requested_at, r.role, r.subject AS requested_by,
       r.session_id, r.statement_number, st.statement, st.deciding_rule,
       d.time AS decided_at, d.decision, d.subject AS decided_by
FROM custos_audit.events AS r
LEFT JOIN custos_audit.events AS d
  ON d.approval_id = r.approval_id
 AND d.event_type = 'approval_decided'
LEFT JOIN custos_audit.events AS st
  ON st.session_id = r.session_id
 AND st.statement_number = r.statement_number
 AND st.event_type = 'statement'
WHERE r.event_type = 'approval_requested'
  AND from_iso8601_timestamp(r.time) BETWEEN from_iso8601_timestamp(?) AND from_iso8601_timestamp(?)
ORDER BY from_iso8601_timestamp(r.time), r.approval_id
