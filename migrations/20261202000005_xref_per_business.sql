-- Issue 13: a cross-reference belongs to the Sage business it points into. Connecting a
-- binding to a different business starts fresh (nothing there is "already in Sage");
-- reconnecting the same business finds everything again.
UPDATE entity_xref x SET sage_business_id = c.business_id
FROM sage_connections c
WHERE x.binding_id = c.binding_id AND x.sage_business_id IS NULL AND c.business_id IS NOT NULL;
UPDATE entity_xref SET sage_business_id = '' WHERE sage_business_id IS NULL;
ALTER TABLE entity_xref ALTER COLUMN sage_business_id SET DEFAULT '';
ALTER TABLE entity_xref ALTER COLUMN sage_business_id SET NOT NULL;
ALTER TABLE entity_xref DROP CONSTRAINT entity_xref_pkey;
ALTER TABLE entity_xref ADD PRIMARY KEY (binding_id, sage_business_id, entity_type, magento_entity_id, currency);
DROP INDEX entity_xref_invoices_by_customer;
CREATE INDEX entity_xref_invoices_by_customer ON entity_xref (binding_id, sage_business_id, (extra->>'customer'))
    WHERE entity_type = 'invoice';
