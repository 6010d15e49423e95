//! Calls to the appliances' agents: retries, pings one and many.

use super::*;

impl Fleet {
    /// The agent's URL for `path` (which starts with `/`).
    pub(super) fn agent_url(a: &Appliance, path: &str) -> Result<String, FleetError> {
        let (Some(address), Some(port)) = (&a.address, a.agent_port) else {
            return Err(FleetError::Conflict(format!(
                "appliance {} has no address yet",
                a.id
            )));
        };
        let host = match address.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => address.clone(),
        };
        Ok(format!("https://{host}:{port}{path}"))
    }

    /// Calls an appliance's agent, retrying what can be retried: any failure before the
    /// request was sent, and timeouts of reads. Fails with 502 when the agent does not
    /// answer after `tasks.agent_attempts`.
    pub async fn call_agent(
        &self,
        a: &Appliance,
        verb: Verb,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Incoming, FleetError> {
        let request = Outgoing {
            verb,
            url: Self::agent_url(a, path)?,
            // Only this appliance's own certificate will do.
            peer: Some(a.id.clone()),
            headers,
            body,
        };
        let attempts = self.config.tasks.agent_attempts.max(1);
        let idempotent = verb != Verb::Post;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.agents.load().call(request.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    last = e.to_string();
                    let again = match e {
                        CallError::NotSent(_) => true,
                        CallError::Broken(_) => idempotent,
                        CallError::Refused(_) => false,
                    };
                    if !again {
                        break;
                    }
                    if attempt < attempts {
                        let pause = Duration::from_millis(200 << (attempt - 1).min(5));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        Err(FleetError::BadGateway(format!(
            "the agent of {} does not answer: {last}",
            a.id
        )))
    }

    /// `GET /` of the agent (`check` ping) or `GET /status` (`check` status, kept as the
    /// appliance's last status): reachability, latency and the agent's answer.
    pub async fn ping(&self, a: &Appliance, check: Check) -> Result<Value, FleetError> {
        let (answer, status) = self.probe(a, check).await?;
        if let Some(status) = status {
            self.store
                .record_statuses(&[(a.id.clone(), status)])
                .await?;
        }
        Ok(answer)
    }

    /// One call to the agent; the answer, and the status to keep when it is one.
    pub(super) async fn probe(
        &self,
        a: &Appliance,
        check: Check,
    ) -> Result<(Value, Option<String>), FleetError> {
        if !a.state.is_running() {
            return Err(FleetError::Conflict(format!(
                "appliance {} is {}: nothing to ping",
                a.id,
                a.state.as_str()
            )));
        }
        let path = match check {
            Check::Ping => "/",
            Check::Status => "/status",
        };
        let started = std::time::Instant::now();
        let reply = self
            .call_agent(a, Verb::Get, path, json_headers(), Bytes::new())
            .await?;
        let latency_us = started.elapsed().as_micros();
        if !reply.is_success() {
            return Err(FleetError::BadGateway(format!(
                "the agent of {} answered {}",
                a.id, reply.status
            )));
        }
        let answer = serde_json::from_slice::<Value>(&reply.body).unwrap_or(Value::Null);
        let status = (check == Check::Status && answer.is_object()).then(|| answer.to_string());
        Ok((
            json!({
                "id": a.id,
                "reachable": true,
                "latency_ms": (latency_us as f64) / 1000.0,
                "agent": answer,
            }),
            status,
        ))
    }

    /// Pings several appliances, at most [`PING_CONCURRENCY`] at a time; each answer or
    /// problem in the order given. Statuses are kept in one write at the end.
    pub async fn ping_many(&self, ids: &[String], check: Check) -> Value {
        use futures_util::StreamExt;
        let known: std::collections::HashMap<String, Appliance> =
            match self.store.appliances(false).await {
                Ok(all) => all.into_iter().map(|a| (a.id.clone(), a)).collect(),
                Err(e) => {
                    let problem = FleetError::from(e).problem();
                    let results: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "reachable": false, "problem": problem}))
                        .collect();
                    return json!({"targets": ids.len(), "reachable": 0, "results": results});
                }
            };
        let probes: Vec<_> = ids
            .iter()
            .map(|id| {
                let appliance = known.get(id);
                async move {
                    match appliance {
                        Some(a) => self.probe(a, check).await,
                        None => Err(FleetError::NotFound),
                    }
                }
            })
            .collect();
        let outcomes: Vec<_> = futures_util::stream::iter(probes)
            .buffered(PING_CONCURRENCY)
            .collect()
            .await;
        let mut statuses = Vec::new();
        let mut results = Vec::with_capacity(outcomes.len());
        for (id, outcome) in ids.iter().zip(outcomes) {
            match outcome {
                Ok((answer, status)) => {
                    if let Some(s) = status {
                        statuses.push((id.clone(), s));
                    }
                    results.push(answer);
                }
                Err(e) => {
                    results.push(json!({"id": id, "reachable": false, "problem": e.problem()}))
                }
            }
        }
        if let Err(e) = self.store.record_statuses(&statuses).await {
            tracing::error!(error = %e, "cannot keep the polled statuses");
        }
        let reachable = results
            .iter()
            .filter(|r| r["reachable"] == Value::Bool(true))
            .count();
        json!({"targets": results.len(), "reachable": reachable, "results": results})
    }
}

/// The headers of a JSON exchange.
pub(super) fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".into()),
        ("accept", "application/json".into()),
    ]
}

impl Fleet {
    /// A pass-through request to `a`'s agent, naming the acting user.
    pub(super) async fn forward(
        &self,
        a: &Appliance,
        request: operations::AgentRequest,
        actor: &str,
    ) -> Result<operations::AgentAnswer, FleetError> {
        use operations::AgentMethod;
        let verb = match request.method {
            AgentMethod::Get => Verb::Get,
            AgentMethod::Put => Verb::Put,
            AgentMethod::Post => Verb::Post,
            AgentMethod::Delete => Verb::Delete,
        };
        let headers = agent_headers(&request, actor);
        let reply = self
            .call_agent(a, verb, &request.path, headers, request.body)
            .await?;
        Ok(operations::AgentAnswer {
            status: reply.status,
            content_type: reply.content_type,
            body: reply.body,
        })
    }
}

/// The header that names the acting user on pass-through requests to an agent.
pub const ACTOR_HEADER: &str = "x-applianced-actor";

/// The headers of a pass-through request: the client's content type and accept, and
/// the acting user (never anything else the client sent, such as its credentials).
fn agent_headers(request: &operations::AgentRequest, actor: &str) -> Vec<(&'static str, String)> {
    [
        ("content-type", request.content_type.as_deref()),
        ("accept", request.accept.as_deref()),
        (ACTOR_HEADER, Some(actor)),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v.to_string())))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_requests_name_the_acting_user() {
        let request = operations::AgentRequest {
            method: operations::AgentMethod::Put,
            path: "/instances/x/haproxy".into(),
            content_type: Some("text/plain".into()),
            accept: Some("application/json".into()),
            body: Bytes::new(),
        };
        let sent = agent_headers(&request, "alice");
        assert_eq!(
            sent,
            [
                ("content-type", "text/plain".to_string()),
                ("accept", "application/json".to_string()),
                (ACTOR_HEADER, "alice".to_string()),
            ],
            "nothing else of the client's request"
        );
    }
}
