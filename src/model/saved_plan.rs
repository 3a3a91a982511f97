//! A push plan saved for review and applied exactly later (`reconcile --save-plan FILE`, then
//! `driftsync apply FILE`). The file is JSON in a stable key order, readable by a person: per
//! user the requests, Auth0's values of the keys they change as the plan saw them, and every
//! compared key's hashes on both sides. Applying re-classifies each user with fresh data and
//! sends a user's requests only when both sides are still exactly what the plan saw
//! ([`PlannedUser::still_holds`]); a user that changed since is `superseded`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::model::plan::{Push, SeenKey};

/// The format this driftsync writes and reads.
pub const FORMAT: &str = "driftsync-plan/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    /// [`FORMAT`].
    pub format: String,
    /// The run that made the plan.
    pub run_id: String,
    /// When it was made (RFC 3339 UTC).
    pub made_at: String,
    /// The Auth0 tenant (`auth0.domain`, or `auth0.base_url`) and connection it is for.
    pub tenant: String,
    pub connection: String,
    pub users: Vec<PlannedUser>,
}

/// One user's planned requests and what they were computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedUser {
    pub user_id: String,
    /// Each `PATCH /api/v2/users/{user_id}` body, sent in order.
    pub requests: Vec<Json>,
    /// Auth0's values of the keys the requests change, when the plan was made (`null`: none).
    pub auth0_before: Map<String, Json>,
    /// Every compared key, with the hashes of both sides' canonical values (hex): the plan
    /// applies only while they are unchanged.
    pub seen: Vec<SeenKey>,
}

impl PlannedUser {
    /// The entry of a planned push (with its review data).
    pub fn of(push: &Push) -> PlannedUser {
        let review = push.review.as_deref().cloned().unwrap_or_default();
        PlannedUser {
            user_id: push.auth0_id.clone(),
            requests: push.bodies.iter().map(|body| body.to_json()).collect(),
            auth0_before: review.auth0_before,
            seen: review.seen,
        }
    }

    /// Why `fresh` (the push planned for this user from fresh data) may not send this plan's
    /// requests, or `None` when both sides are what the plan saw and the requests are the same.
    pub fn still_holds(&self, fresh: &Push) -> Option<String> {
        let review = fresh.review.as_deref().cloned().unwrap_or_default();
        let mut changed: Vec<&str> = Vec::new();
        for seen in &self.seen {
            match review.seen.iter().find(|now| now.key == seen.key) {
                Some(now) if now == seen => {}
                _ => changed.push(&seen.key),
            }
        }
        for now in &review.seen {
            if !self.seen.iter().any(|seen| seen.key == now.key) {
                changed.push(&now.key);
            }
        }
        if !changed.is_empty() {
            changed.sort_unstable();
            changed.dedup();
            return Some(format!(
                "superseded: {} changed since the plan was made; make a new plan",
                changed.join(", ")
            ));
        }
        let requests: Vec<Json> = fresh.bodies.iter().map(|body| body.to_json()).collect();
        (requests != self.requests).then(|| {
            "superseded: the push planned from fresh data differs from the plan; make a new plan"
                .to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::plan::{Body, Review};

    fn push(seen: &[(&str, i64, i64)], name: &str) -> Push {
        let mut body = Map::new();
        body.insert("name".into(), Json::from(name));
        let body = Body::of(body);
        Push {
            auth0_id: "auth0|1".into(),
            legacy_id: "1".into(),
            bodies: vec![body],
            review: Some(Box::new(Review {
                auth0_before: Map::new(),
                seen: seen
                    .iter()
                    .map(|(k, l, a)| SeenKey::new(k, *l, *a))
                    .collect(),
            })),
            ..Push::default()
        }
    }

    #[test]
    fn a_plan_holds_only_while_both_sides_are_what_it_saw() {
        let planned = PlannedUser::of(&push(&[("name", 1, 2), ("email", 3, 3)], "New"));
        assert_eq!(
            planned.still_holds(&push(&[("email", 3, 3), ("name", 1, 2)], "New")),
            None
        );
        let auth0_changed = planned.still_holds(&push(&[("name", 1, 5), ("email", 3, 3)], "New"));
        assert!(auth0_changed.unwrap().contains("name changed"));
        let key_gone = planned.still_holds(&push(&[("name", 1, 2)], "New"));
        assert!(key_gone.unwrap().contains("email changed"));
        let other_body = planned.still_holds(&push(&[("name", 1, 2), ("email", 3, 3)], "Newer"));
        assert!(other_body.unwrap().contains("differs from the plan"));
        // The file form round-trips and keeps its key order.
        let text = serde_json::to_string(&planned).unwrap();
        assert!(
            text.starts_with(r#"{"user_id":"auth0|1","requests":[{"name":"New"}]"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<PlannedUser>(&text).unwrap(), planned);
    }
}
