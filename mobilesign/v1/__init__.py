"""Generated gRPC and protobuf modules of the mobilesign API."""
