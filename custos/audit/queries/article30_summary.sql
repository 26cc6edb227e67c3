-- name: article-30-summary
-- description: Processing of personal data in a period (GDPR Article 30), by role, purpose and category: statements executed, principals, first and last time
-- parameters: from_time (ISO 8601), to_time (ISO 8601)
SELECT e.role, e.purpose, c.category, count(*) AS statements,
       count(DISTINCT e.subject) AS principals,
       min(from_iso8601_timestamp(e.time)) AS first_time,
       max(from_iso8601_timestamp(e.time)) AS last_time
FROM custos_audit.events AS e
JOIN custos_audit.events AS o
  ON o.session_id = e.session_id
 AND o.statement_number = e.statement_number
 AND o.event_type = 'statement_outcome'
CROSS JOIN UNNEST(e.categories) AS c (category)
WHERE e.event_type = 'statement'
  AND o.status = 'completed'
  AND from_iso8601_timestamp(e.time) BETWEEN from_iso8601_timestamp(?) AND from_iso8601_timestamp(?)
GROUP BY e.role, e.purpose, c.category
ORDER BY e.role, e.purpose, c.category
