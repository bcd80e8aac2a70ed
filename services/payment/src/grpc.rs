//! The gRPC face of the service.

use ordersys_kit::end_user::EndUsers;
use ordersys_proto::payment::v1 as pb;
use pb::payment_service_server::PaymentService as Rpc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::repository::PaymentRepo;
use crate::service::Wallets;

/// tonic handler.
#[derive(Debug, Clone)]
pub struct PaymentGrpc<R> {
    wallets: Wallets<R>,
    users: EndUsers,
}

impl<R> PaymentGrpc<R> {
    /// Wrap the read side, for the users whose tokens `users` verifies.
    pub fn new(wallets: Wallets<R>, users: EndUsers) -> Self {
        Self { wallets, users }
    }
}

#[tonic::async_trait]
impl<R: PaymentRepo> Rpc for PaymentGrpc<R> {
    async fn get_wallet(
        &self,
        req: Request<pb::GetWalletRequest>,
    ) -> Result<Response<pb::Wallet>, Status> {
        let user_id = self.users.user(&req, &req.get_ref().user_id)?;
        let user = Uuid::parse_str(&user_id)
            .map_err(|_| Status::invalid_argument("user_id is not a UUID"))?;
        let balance = self.wallets.get(user).await.map_err(|e| {
            tracing::error!(error = %e, "ошибка чтения счёта");
            Status::unavailable("payment database unavailable")
        })?;
        Ok(Response::new(pb::Wallet {
            user_id,
            balance: Some(balance),
        }))
    }
}
