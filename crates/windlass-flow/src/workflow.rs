//! Typed workflows: ordinary async Rust over a [`FlowContext`], with serde input and output.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::FlowContext;
use crate::error::FlowError;

/// A workflow: one kind of multi-step process.
///
/// Its [`run`](Workflow::run) is executed from the top on every resumption of a run (after
/// a crash, a durable sleep, a restart), with the run's journal in its context: finished
/// steps return their journaled results, so only unfinished work runs. Keep everything with
/// an effect inside steps, and reach steps the same way on every replay (see
/// [`FlowContext`]).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use windlass_flow::{FlowContext, FlowError, Workflow};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { id: u64, cents: u64 }
///
/// struct Checkout;
///
/// impl Workflow for Checkout {
///     const KIND: &'static str = "checkout";
///     type Input = Order;
///     type Output = String;
///     async fn run(&self, ctx: FlowContext, order: Order) -> Result<String, FlowError> {
///         let reservation: String = ctx
///             .step("reserve", || async { Ok::<_, std::io::Error>(format!("r-{}", order.id)) })
///             .compensate_with(|_reservation: String| async { Ok::<_, std::io::Error>(()) })
///             .await?;
///         let receipt: String = ctx
///             .step("charge", || async { Ok::<_, std::io::Error>(format!("paid {}", order.cents)) })
///             .await?;
///         Ok(format!("{reservation}, {receipt}"))
///     }
/// }
/// ```
pub trait Workflow: Send + Sync + 'static {
    /// The kind name stored with each run; unique among the workflows of one
    /// [`Flows`](crate::Flows).
    const KIND: &'static str;
    /// The input type.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// The output type.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Runs (or resumes) one run.
    fn run(
        &self,
        ctx: FlowContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, FlowError>> + Send;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the driver needs of a workflow, without its types.
pub(crate) trait ErasedWorkflow: Send + Sync {
    /// Decodes the input and runs; an input that does not decode is `Err(Err(message))`.
    fn run(&self, ctx: FlowContext, input: Value) -> BoxFuture<Result<Value, Failure>>;
}

/// How an erased run ended.
pub(crate) enum Failure {
    /// The workflow failed: compensate.
    Flow(FlowError),
    /// Its input or output could not be (de)serialised: compensate, and say so.
    Serde(String),
}

pub(crate) struct Erased<W>(pub(crate) Arc<W>);

impl<W: Workflow> ErasedWorkflow for Erased<W> {
    fn run(&self, ctx: FlowContext, input: Value) -> BoxFuture<Result<Value, Failure>> {
        let workflow = Arc::clone(&self.0);
        Box::pin(async move {
            let input: W::Input = serde_json::from_value(input).map_err(|e| {
                Failure::Serde(format!(
                    "the input of workflow `{}` does not decode: {e}",
                    W::KIND
                ))
            })?;
            let output = workflow.run(ctx, input).await.map_err(Failure::Flow)?;
            serde_json::to_value(output).map_err(|e| {
                Failure::Serde(format!(
                    "the output of workflow `{}` does not serialise: {e}",
                    W::KIND
                ))
            })
        })
    }
}
