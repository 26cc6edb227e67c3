-- name: masking-by-category
-- description: What masking did in a period, by category and method: result columns masked, values masked and nulled, statements, roles
-- parameters: from_time (ISO 8601), to_time (ISO 8601)
SELECT m.category, m.method, count(*) AS columns_masked, sum(m."values") AS values_masked,
       sum(m.nulled) AS values_nulled, count(DISTINCT o.event_id) AS statements,
       count(DISTINCT o.role) AS roles
FROM custos_audit.events AS o
CROSS JOIN UNNEST(o.masked) AS m (statement_index, position, category, method, "values", nulled)
WHERE o.event_type = 'statement_outcome'
  AND from_iso8601_timestamp(o.time) BETWEEN from_iso8601_timestamp(?) AND from_iso8601_timestamp(?)
GROUP BY m.category, m.method
ORDER BY m.category, m.method
