//! Tests of the protocol core through its API, driven by the seeded network
//! simulator (`rudp::sim`): whole connections and endpoints under loss,
//! duplication, reordering and hostile peers. They live in the crate
//! because the simulator and `RudpConfig::initial_sequence` are test
//! support, not API.

mod congestion;
mod endpoint;
mod hostile;
mod loss_matrix;
mod regressions;
mod sim;
