//! What a generated store starts with: the places its customers live and its products.

// A part of the catalogue: its types and helpers are this file's too.
use super::*;

pub(super) struct Place {
    pub(super) street: &'static str,
    pub(super) city: &'static str,
    pub(super) postcode: &'static str,
    pub(super) country: &'static str,
    pub(super) region: Option<&'static str>,
}

pub(super) const PLACES: &[Place] = &[
    Place {
        street: "12 High Street",
        city: "London",
        postcode: "SW1A 1AA",
        country: "GB",
        region: None,
    },
    Place {
        street: "4 Mill Lane",
        city: "Manchester",
        postcode: "M1 1AE",
        country: "GB",
        region: None,
    },
    Place {
        street: "221B Baker Street",
        city: "London",
        postcode: "NW1 6XE",
        country: "GB",
        region: None,
    },
    Place {
        street: "Unit 3, Riverside Park",
        city: "Leeds",
        postcode: "LS1 4DY",
        country: "GB",
        region: None,
    },
    Place {
        street: "7 Station Road",
        city: "Bristol",
        postcode: "BS1 5TR",
        country: "GB",
        region: None,
    },
    Place {
        street: "Rue de Rivoli 10",
        city: "Paris",
        postcode: "75001",
        country: "FR",
        region: None,
    },
    Place {
        street: "Hauptstraße 5",
        city: "Berlin",
        postcode: "10115",
        country: "DE",
        region: None,
    },
    Place {
        street: "Calle Mayor 3",
        city: "Madrid",
        postcode: "28013",
        country: "ES",
        region: None,
    },
    Place {
        street: "Keizersgracht 12",
        city: "Amsterdam",
        postcode: "1015 CJ",
        country: "NL",
        region: None,
    },
    Place {
        street: "5th Avenue 100",
        city: "New York",
        postcode: "10001",
        country: "US",
        region: Some("New York"),
    },
    Place {
        street: "O'Connell Street 1",
        city: "Dublin",
        postcode: "D01 F5P2",
        country: "IE",
        region: None,
    },
];

pub(super) fn default_products() -> Vec<Product> {
    let simple = |id: i64, sku: &str, name: &str, price: &str, class: TaxClass| Product {
        id,
        sku: sku.to_owned(),
        name: name.to_owned(),
        type_id: "simple",
        price: dec(price),
        special_price: None,
        cost: Some(cents(dec(price) * dec("0.45"))),
        weight: Some(dec("0.5")),
        class,
        stock_qty: Some(dec("100")),
        manage_stock: true,
        children: vec![],
        created_at: ts(-200, id),
        updated_at: ts(-10, id),
    };
    let virtual_ = |p: Product, type_id: &'static str| Product {
        type_id,
        weight: None,
        stock_qty: None,
        manage_stock: false,
        ..p
    };
    vec![
        simple(1, "MUG-001", "Ceramic Mug", "8.99", TaxClass::Standard),
        simple(
            2,
            "TEE-BLK-M",
            "Organic T&#8209;Shirt &amp; Tote",
            "23.99",
            TaxClass::Standard,
        ),
        simple(3, "BOOK-101", "Field Guide to Birds", "14.50", TaxClass::Books),
        simple(4, "SEAT-CHILD", "Child Car Seat", "129.00", TaxClass::Reduced),
        simple(5, "LAMP-01", "Desk Lamp&trade;", "39.95", TaxClass::Standard),
        virtual_(
            simple(6, "WARRANTY-2Y", "2-Year Warranty", "19.00", TaxClass::Standard),
            "virtual",
        ),
        virtual_(
            simple(7, "EBOOK-01", "Cooking eBook", "9.99", TaxClass::Standard),
            "downloadable",
        ),
        simple(8, "HOODIE-S", "Hoodie – Small", "0", TaxClass::Standard),
        simple(9, "HOODIE-L", "Hoodie – Large", "0", TaxClass::Standard),
        Product {
            type_id: "configurable",
            children: vec![8, 9],
            stock_qty: None,
            manage_stock: false,
            ..simple(10, "HOODIE", "Hoodie", "45.00", TaxClass::Standard)
        },
        Product {
            type_id: "bundle",
            children: vec![1, 5],
            stock_qty: None,
            manage_stock: false,
            ..simple(11, "DESK-SET", "Desk Set", "0", TaxClass::Standard)
        },
        // A special price that ended before the sandbox's orders (the module still sends it).
        Product {
            special_price: Some((dec("3.33"), "2026-01-01".into(), "2026-03-31".into())),
            ..simple(12, "PEN-3", "Pen (pack of 3)", "3.99", TaxClass::Standard)
        },
    ]
}
