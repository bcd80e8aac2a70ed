//! docs/ARCHITECTURE.md draws the order service's sagas as its code defines them: each
//! definition's `to_mermaid()` (with the default payment deadline) is in the document,
//! word for word.

use std::time::Duration;

use ordersys_order::saga::{cancel_order, create_order};

#[test]
fn the_architecture_document_draws_the_sagas_as_defined() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ARCHITECTURE.md");
    let doc = std::fs::read_to_string(path).expect("docs/ARCHITECTURE.md");
    // The default PAYMENT_DEADLINE_SECS.
    let deadline = Duration::from_secs(30);
    for def in [create_order(deadline), cancel_order(deadline)] {
        let block = format!("```mermaid\n{}```\n", def.to_mermaid());
        assert!(
            doc.contains(&block),
            "docs/ARCHITECTURE.md lacks (or has an old drawing of) `{}`; put in:\n{block}",
            def.name()
        );
    }
}
