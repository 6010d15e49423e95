//! Typed ids: an appliance's id cannot be passed where a user's or a task's is meant.

use std::fmt;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                $name(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// An appliance (also its certificate's CN).
    ApplianceId
);
typed_id!(
    /// A user.
    UserId
);
typed_id!(
    /// A task.
    TaskId
);
typed_id!(
    /// A team, by id or by name.
    TeamRef
);
typed_id!(
    /// A key pair.
    KeypairId
);
typed_id!(
    /// A service account.
    AccountId
);
typed_id!(
    /// An invoice (`inv-YYYY-MM-TEAMID`).
    InvoiceId
);
typed_id!(
    /// A cluster.
    ClusterId
);
typed_id!(
    /// A request to join (enrolment).
    EnrolmentId
);
typed_id!(
    /// An enrolment token (its record; never the token).
    EnrolmentTokenId
);
