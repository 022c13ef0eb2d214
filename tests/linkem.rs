//! The link emulator (tests/util/linkem) does what it is configured to do.
#[path = "util/linkem/mod.rs"]
mod linkem;

#[test]
fn smoke() {
    if !linkem::require("smoke") {
        return;
    }
    let link = linkem::Link::new(linkem::LinkConfig::symmetric(
        linkem::Impairments::none().delay_ms(10.0),
    ))
    .unwrap();
    let p = linkem::probe::udp_probe(
        &link,
        linkem::Dir::AtoB,
        100,
        100,
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(100),
    )
    .unwrap();
    println!("{p}");
    println!("{}", link.stats());
}
