-- Demo data for Custos: fake customers of a fictional UK shop. No real people.
--
-- Every value comes from a keyed hash of the row number (hashint8extended), not from random(),
-- so the data is the same on every run and every PostgreSQL version. Phone numbers sit in
-- Ofcom's drama range (+44 7700 900xxx), emails at example.com/example.org (RFC 2606), and
-- IBANs use invented bank codes with valid check digits, so detectors see real-looking shapes.
-- Columns holding personal data say so in their comment, starting with "personal data".

CREATE SCHEMA crm;
COMMENT ON SCHEMA crm IS 'Demo CRM of a fictional shop; all personal data in it is fake';

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET search_path = crm, public', current_database());
END
$$;

-- pick(i, salt, n): a stable pseudo-random integer in [0, n) for row i.
CREATE FUNCTION pg_temp.pick(i bigint, salt bigint, n bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    RETURN (hashint8extended(i, salt) & 9223372036854775807) % n;

CREATE TABLE crm.products (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents > 0)
);
COMMENT ON TABLE crm.products IS 'Catalogue; no personal data';

INSERT INTO crm.products (id, name, price_cents) VALUES
    (1, 'Ceramic mug', 1200),
    (2, 'Linen tea towel', 900),
    (3, 'Walnut chopping board', 3450),
    (4, 'Enamel saucepan', 5400),
    (5, 'Wool throw', 7900),
    (6, 'Cast iron skillet', 4800),
    (7, 'Glass carafe', 1850),
    (8, 'Bamboo utensil set', 1500),
    (9, 'Stoneware bowl', 1100),
    (10, 'Copper kettle', 8900),
    (11, 'Beeswax candle', 650),
    (12, 'Oak serving tray', 2900);

CREATE TABLE crm.customers (
    id bigint PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL UNIQUE,
    phone text NOT NULL,
    iban text NOT NULL,
    birth_date date NOT NULL,
    street_address text NOT NULL,
    city text NOT NULL,
    country text NOT NULL,
    created_at timestamptz NOT NULL,
    marketing_opt_in boolean NOT NULL
);
COMMENT ON TABLE crm.customers IS 'One row per customer; most columns are personal data';
COMMENT ON COLUMN crm.customers.id IS 'personal data (indirect): identifies a customer';
COMMENT ON COLUMN crm.customers.full_name IS 'personal data: name';
COMMENT ON COLUMN crm.customers.email IS 'personal data: email address';
COMMENT ON COLUMN crm.customers.phone IS 'personal data: phone number';
COMMENT ON COLUMN crm.customers.iban IS 'personal data: bank account (IBAN)';
COMMENT ON COLUMN crm.customers.birth_date IS 'personal data: date of birth';
COMMENT ON COLUMN crm.customers.street_address IS 'personal data: postal address';
COMMENT ON COLUMN crm.customers.city IS 'personal data: postal address';
COMMENT ON COLUMN crm.customers.country IS 'personal data: postal address';
COMMENT ON COLUMN crm.customers.created_at IS 'not personal data on its own';
COMMENT ON COLUMN crm.customers.marketing_opt_in IS 'personal data: consent record';

WITH names AS (
    SELECT
        ARRAY['Amelia', 'Oliver', 'Isla', 'George', 'Ava', 'Noah', 'Mia', 'Arthur', 'Ivy',
              'Leo', 'Freya', 'Oscar', 'Lily', 'Harry', 'Grace', 'Jack', 'Sophia', 'Charlie',
              'Rosie', 'Thomas', 'Evie', 'Alfie', 'Poppy', 'Henry', 'Ella', 'Theo', 'Florence',
              'Jacob', 'Willow', 'Samuel', 'Priya', 'Arjun', 'Aisha', 'Omar', 'Zara', 'Kwame',
              'Niamh', 'Cian', 'Eilidh', 'Rhys'] AS first_names,
        ARRAY['Smith', 'Jones', 'Taylor', 'Brown', 'Williams', 'Wilson', 'Johnson', 'Davies',
              'Patel', 'Wright', 'Robinson', 'Thompson', 'Evans', 'Walker', 'White', 'Roberts',
              'Green', 'Hall', 'Thomas', 'Clarke', 'Jackson', 'Wood', 'Harris', 'Edwards',
              'Turner', 'Martin', 'Cooper', 'Hill', 'Ward', 'Hughes', 'Khan', 'Ali', 'Begum',
              'Murphy', 'Kelly', 'Campbell', 'Stewart', 'Okafor', 'Mensah', 'Nowak'] AS last_names,
        ARRAY['High Street', 'Station Road', 'Church Lane', 'Mill Lane', 'Victoria Road',
              'Park Avenue', 'Acacia Avenue', 'Kings Road', 'Queens Road', 'Green Lane',
              'Manor Road', 'The Crescent', 'Orchard Close', 'Meadow Way', 'Chapel Street',
              'Riverside Walk', 'Elm Grove', 'Willow Drive', 'School Lane', 'North Street']
            AS streets,
        ARRAY['London', 'Manchester', 'Birmingham', 'Leeds', 'Glasgow', 'Edinburgh',
              'Bristol', 'Cardiff', 'Belfast', 'Liverpool', 'Newcastle', 'Sheffield',
              'Nottingham', 'Brighton', 'York', 'Norwich', 'Aberdeen', 'Swansea', 'Oxford',
              'Cambridge'] AS cities,
        -- Invented bank codes, each with its letters spelled as IBAN digits (A=10 .. Z=35).
        ARRAY['XMPL', 'DEMO', 'FAKE', 'NOBK'] AS banks,
        ARRAY['33222521', '13142224', '15102014', '23241120'] AS bank_digits
),
picked AS (
    SELECT
        i,
        n.first_names[1 + pg_temp.pick(i, 1, array_length(n.first_names, 1))] AS first_name,
        n.last_names[1 + pg_temp.pick(i, 2, array_length(n.last_names, 1))] AS last_name,
        1 + pg_temp.pick(i, 3, 4) AS bank,
        lpad(pg_temp.pick(i, 4, 100000000000000)::text, 14, '0') AS account,
        n.banks,
        n.bank_digits,
        n.streets,
        n.cities
    FROM generate_series(1, 5000) AS i, names AS n
)
INSERT INTO crm.customers
SELECT
    r.i,
    r.first_name || ' ' || r.last_name,
    lower(r.first_name) || '.' || lower(r.last_name) || r.i
        || CASE WHEN pg_temp.pick(r.i, 5, 3) = 0 THEN '@example.org' ELSE '@example.com' END,
    '+44 7700 900' || lpad(pg_temp.pick(r.i, 6, 1000)::text, 3, '0'),
    -- ISO 13616 check digits: 98 - (BBAN || 'GB00' as digits) mod 97; GB00 is '161100'.
    'GB' || lpad((98 - mod((r.bank_digits[r.bank] || r.account || '161100')::numeric, 97))::text,
                 2, '0')
        || r.banks[r.bank] || r.account,
    date '1950-01-01' + pg_temp.pick(r.i, 7, date '2005-12-31' - date '1950-01-01' + 1)::int,
    (1 + pg_temp.pick(r.i, 8, 240)) || ' ' || r.streets[1 + pg_temp.pick(r.i, 9, 20)],
    r.cities[1 + pg_temp.pick(r.i, 10, 20)],
    'United Kingdom',
    timestamptz '2019-01-01 00:00:00+00' + make_interval(secs => pg_temp.pick(r.i, 11, 157766400)),
    pg_temp.pick(r.i, 12, 3) = 0
FROM picked AS r;

CREATE TABLE crm.orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customers (id),
    ordered_at timestamptz NOT NULL,
    total_cents bigint NOT NULL CHECK (total_cents > 0),
    currency text NOT NULL CHECK (currency IN ('GBP', 'EUR')),
    status text NOT NULL
        CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'refunded', 'cancelled'))
);
CREATE INDEX orders_customer_id_idx ON crm.orders (customer_id);
COMMENT ON TABLE crm.orders IS 'Orders; personal data only through the customer they belong to';
COMMENT ON COLUMN crm.orders.customer_id IS 'personal data (indirect): links to a customer';

INSERT INTO crm.orders
SELECT
    i,
    c.id,
    c.created_at + make_interval(secs => pg_temp.pick(i, 21, 63072000)),
    500 + pg_temp.pick(i, 22, 49500),
    (ARRAY['GBP', 'GBP', 'GBP', 'EUR'])[1 + pg_temp.pick(i, 23, 4)],
    (ARRAY['pending', 'paid', 'shipped', 'delivered', 'delivered', 'delivered', 'refunded',
           'cancelled'])[1 + pg_temp.pick(i, 24, 8)]
FROM generate_series(1, 20000) AS i
JOIN crm.customers AS c ON c.id = 1 + pg_temp.pick(i, 20, 5000);

CREATE TABLE crm.support_tickets (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES crm.customers (id),
    opened_at timestamptz NOT NULL,
    subject text NOT NULL,
    body text NOT NULL
);
CREATE INDEX support_tickets_customer_id_idx ON crm.support_tickets (customer_id);
COMMENT ON TABLE crm.support_tickets IS 'Support requests; free text may contain personal data';
COMMENT ON COLUMN crm.support_tickets.customer_id IS
    'personal data (indirect): links to a customer';
COMMENT ON COLUMN crm.support_tickets.subject IS 'personal data possible: free text';
COMMENT ON COLUMN crm.support_tickets.body IS
    'personal data: free text that often quotes the customer''s email or phone';

INSERT INTO crm.support_tickets
SELECT
    i,
    c.id,
    c.created_at + make_interval(secs => pg_temp.pick(i, 31, 63072000)),
    (ARRAY['Where is my order?', 'Refund request', 'Damaged item', 'Change of address',
           'Cannot log in', 'Cancel my subscription', 'Invoice needed',
           'Delete my data'])[1 + s.topic],
    CASE pg_temp.pick(i, 33, 4)
        WHEN 0 THEN 'Hello, please send any updates to ' || c.email || ' instead of post. '
        WHEN 1 THEN 'Hi, you can reach me on ' || c.phone || ' or at ' || c.email || '. '
        ELSE 'Hello. '
    END
    || (ARRAY['My order has not arrived yet and the tracking page has not changed.',
              'I would like a refund for my last order.',
              'The item arrived broken; photos attached.',
              'I have moved house and need to update my address.',
              'The password reset email never arrives.',
              'Please cancel my subscription at the end of this month.',
              'I need a VAT invoice for my last order.',
              'Please delete all the data you hold about me.'])[1 + s.topic]
    || ' Thanks, ' || split_part(c.full_name, ' ', 1)
FROM generate_series(1, 2000) AS i
CROSS JOIN LATERAL (SELECT pg_temp.pick(i, 32, 8) AS topic) AS s
JOIN crm.customers AS c ON c.id = 1 + pg_temp.pick(i, 30, 5000);

ANALYZE crm.products, crm.customers, crm.orders, crm.support_tickets;
