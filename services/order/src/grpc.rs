//! The gRPC face of the service.

use ordersys_kit::context::RequestContext;
use ordersys_kit::end_user::EndUsers;
use ordersys_proto::common::v1::Money;
use ordersys_proto::order::v1 as pb;
use pb::order_service_server::OrderService as Rpc;
use tonic::{Request, Response, Status};

use crate::domain::{Item, Order};
use crate::saga::Backend;
use crate::service::{OrderError, OrderService};

/// tonic handler over [`OrderService`].
#[derive(Debug)]
pub struct OrderGrpc<B: Backend> {
    service: OrderService<B>,
    users: EndUsers,
}

impl<B: Backend> OrderGrpc<B> {
    /// Wrap the service, acting for the users whose tokens `users` verifies.
    pub fn new(service: OrderService<B>, users: EndUsers) -> Self {
        Self { service, users }
    }
}

impl From<OrderError> for Status {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Validation(v) => Status::invalid_argument(v.to_string()),
            OrderError::NotFound => Status::not_found("order not found"),
            OrderError::AlreadyCancelled => {
                Status::failed_precondition("order is already cancelled")
            }
            OrderError::KeyReused => {
                let mut st = Status::failed_precondition(e.to_string());
                st.metadata_mut().insert(
                    ordersys_kit::context::ERROR_CODE,
                    tonic::metadata::MetadataValue::from_static("idempotency_key_reused"),
                );
                st
            }
            OrderError::Unavailable(msg) => {
                tracing::error!(error = %msg, "зависимость недоступна");
                Status::unavailable("a dependency of the order service is unavailable")
            }
        }
    }
}

fn to_pb(o: Order) -> pb::Order {
    pb::Order {
        order_id: o.id.to_string(),
        user_id: o.user_id.to_string(),
        status: o.status.as_str().to_owned(),
        saga_state: o.saga_state,
        total: Some(Money {
            amount_minor: o.total,
            currency: o.currency,
        }),
        items: o
            .items
            .into_iter()
            .map(|i| pb::OrderItem {
                product_id: i.product_id,
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect(),
        payment_id: o.payment_id.unwrap_or_default(),
        failure_reason: o.failure_reason.unwrap_or_default(),
        created_at: o.created_at,
    }
}

#[tonic::async_trait]
impl<B: Backend> Rpc for OrderGrpc<B> {
    async fn create_order(
        &self,
        req: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let user = self.users.user(&req, &req.get_ref().user_id)?;
        let ctx = req.extensions().get::<RequestContext>().cloned();
        let r = req.into_inner();
        let items = r
            .items
            .into_iter()
            .map(|i| Item {
                product_id: i.product_id,
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect();
        let o = self
            .service
            .create(&user, items, &r.currency, &r.idempotency_key, ctx.as_ref())
            .await?;
        Ok(Response::new(to_pb(o)))
    }

    async fn get_order(
        &self,
        req: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let user = self.users.user(&req, &req.get_ref().user_id)?;
        let r = req.into_inner();
        let o = if r.wait_ms == 0 {
            self.service.get(&user, &r.order_id).await?
        } else {
            let wait = std::time::Duration::from_millis(u64::from(r.wait_ms));
            self.service.wait(&user, &r.order_id, wait).await?
        };
        Ok(Response::new(to_pb(o)))
    }

    async fn list_orders(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let user = self.users.user(&req, &req.get_ref().user_id)?;
        let r = req.into_inner();
        let (orders, next) = self.service.list(&user, r.limit, &r.cursor).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(to_pb).collect(),
            next_cursor: next.unwrap_or_default(),
        }))
    }

    async fn cancel_order(
        &self,
        req: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let user = self.users.user(&req, &req.get_ref().user_id)?;
        let ctx = req.extensions().get::<RequestContext>().cloned();
        let r = req.into_inner();
        Ok(Response::new(to_pb(
            self.service
                .cancel(&user, &r.order_id, ctx.as_ref())
                .await?,
        )))
    }
}
