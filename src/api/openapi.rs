//! The OpenAPI 3.1 description served at `/openapi.json`.

pub(crate) fn document() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
