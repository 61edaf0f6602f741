//! A config.json that does not match its weights.

mod common;

use common::*;
use engine::{Encoder, EncoderOptions};

#[test]
#[cfg_attr(
    no_shared,
    ignore = "needs ../shared: the fixtures and data beside the checkout"
)]
fn a_config_with_fewer_layers_than_the_weights_is_refused() {
    let d = tempfile::tempdir().unwrap();
    for name in ["tiny-bert", "tiny-bert-bin"] {
        let m = d.path().join(name);
        testkit::copy_tree(&fixtures().join(name), &m);
        let cfg = m.join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains("\"num_hidden_layers\": 2"));
        std::fs::write(
            &cfg,
            text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
        )
        .unwrap();
        let e = Encoder::load(m.to_str().unwrap(), &EncoderOptions::default())
            .err()
            .expect("a 1-layer config on 2-layer weights must not load")
            .to_string();
        assert!(
            e.contains(&cfg.display().to_string())
                && e.contains("16 weights")
                && e.contains("encoder.layer.1.")
                && e.contains("set num_hidden_layers to 2"),
            "{e}"
        );
    }
    // The fixtures as they are load (their parity is tested in parity.rs).
    for name in ["tiny-bert", "tiny-bert-bin"] {
        Encoder::load(
            fixtures().join(name).to_str().unwrap(),
            &EncoderOptions::default(),
        )
        .unwrap();
    }
}
