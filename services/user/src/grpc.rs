//! The gRPC face of the service.

use ordersys_kit::end_user::EndUsers;
use ordersys_proto::user::v1 as pb;
use pb::user_service_server::UserService as Rpc;
use tonic::{Request, Response, Status};

use crate::service::{UserError, UserService};

/// tonic handler over [`UserService`].
#[derive(Debug, Clone)]
pub struct UserGrpc {
    service: UserService,
    users: EndUsers,
}

impl UserGrpc {
    /// Wrap the service; `GetUser` answers for the user whose token `users` verifies.
    pub fn new(service: UserService, users: EndUsers) -> Self {
        Self { service, users }
    }
}

impl From<UserError> for Status {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Validation(v) => Status::invalid_argument(v.to_string()),
            UserError::DuplicateEmail => Status::already_exists("email already registered"),
            UserError::InvalidCredentials => Status::unauthenticated("invalid email or password"),
            UserError::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
            UserError::NotFound => Status::not_found("user not found"),
            UserError::Busy => Status::resource_exhausted("too many logins at once; retry shortly"),
            UserError::Unavailable(e) => {
                tracing::error!(error = %e, "зависимость недоступна");
                Status::unavailable("a dependency of the user service is unavailable")
            }
            UserError::Internal(e) => {
                tracing::error!(error = %e, "внутренняя ошибка");
                Status::internal("internal error")
            }
        }
    }
}

#[tonic::async_trait]
impl Rpc for UserGrpc {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        let user = self.service.register(&r.email, &r.password).await?;
        Ok(Response::new(pb::RegisterResponse {
            user_id: user.id.to_string(),
            email: user.email.as_str().to_owned(),
        }))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = req.into_inner();
        let token = self.service.login(&r.email, &r.password).await?;
        Ok(Response::new(pb::LoginResponse {
            access_token: token.token,
            token_type: "Bearer".into(),
            expires_in: self.service.token_ttl_secs(),
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.service.logout(&req.into_inner().access_token).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let user = self.users.user(&req, &req.get_ref().user_id)?;
        let user = self.service.get(&user).await?;
        Ok(Response::new(pb::User {
            user_id: user.id.to_string(),
            email: user.email.as_str().to_owned(),
            created_at: user.created_at,
        }))
    }
}
