-- name: subject-accesses
-- description: Every access to one data subject's data, oldest first: who (role, principal), when, which table and columns, returned or named, masked or clear, the rule that decided and the approval
-- parameters: pseudonym (64 hex: the HMAC of the identifier under the audit key, as `custos audit subject` computes it)
SELECT s.time, s.session_id, s.statement_number, s.role, s.principal, s.identifier_type,
       s.relation, s.columns, s.access, s.masked, st.decision, st.deciding_rule,
       o.approval_id, o.status, st.statement
FROM custos_audit.subject_access AS s
LEFT JOIN custos_audit.events AS st
  ON st.session_id = s.session_id
 AND st.statement_number = s.statement_number
 AND st.event_type = 'statement'
LEFT JOIN custos_audit.events AS o
  ON o.event_id = s.event_id
 AND o.event_type = 'statement_outcome'
WHERE s.pseudonym = ?
ORDER BY from_iso8601_timestamp(s.time), s.session_id, s.statement_number, s.identifier_type, s.access
