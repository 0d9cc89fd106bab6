-- A refund made from the order names no invoice: the ledger looks for it among the
-- customer's synced invoices (entity_xref.extra records who bought and what).
CREATE INDEX entity_xref_invoices_by_customer ON entity_xref (binding_id, (extra->>'customer'))
    WHERE entity_type = 'invoice';
