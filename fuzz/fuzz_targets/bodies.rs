//! The controller's request bodies, read as its API reads them: any bytes give a typed
//! request or a 400 refusal, never a panic, and only a JSON object is ever accepted.
#![no_main]

use applianced::callback::Callback;
use applianced::controller::api::appliances::{Action, CreateAppliance};
use applianced::controller::api::extract::parse_object;
use applianced::controller::api::pings::PingMany;
use applianced::controller::api::tokens::TokenRequest;
use applianced::controller::api::users::CreateUser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let accepted = [
        parse_object::<CreateAppliance>(data).is_ok(),
        parse_object::<Action>(data).is_ok(),
        parse_object::<CreateUser>(data).is_ok(),
        parse_object::<TokenRequest>(data).is_ok(),
        parse_object::<PingMany>(data).is_ok(),
        parse_object::<Callback>(data).is_ok(),
    ];
    if accepted.iter().any(|a| *a) {
        let first = data.iter().find(|b| !b.is_ascii_whitespace());
        assert_eq!(first, Some(&b'{'), "a body that is not an object was accepted");
    }
});
