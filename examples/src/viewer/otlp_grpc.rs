//! OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;

use super::ingest::Ingest;
use super::metrics::Protocol;
use super::MAX_REQUEST_BYTES;

pub struct GrpcReceiver {
    ingest: Ingest,
}

impl GrpcReceiver {
    /// The tonic service, accepting gzip like any OTel collector does.
    pub fn into_service(ingest: Ingest) -> TraceServiceServer<Self> {
        TraceServiceServer::new(Self { ingest })
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.ingest.export(request.into_inner(), Protocol::Grpc),
        ))
    }
}
