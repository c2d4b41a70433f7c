"""What both ends of a gRPC call need: channels (:mod:`.channels`), errors as status codes with
stable reasons (:mod:`.status`, :mod:`.reasons`), and protobuf <-> domain conversions
(:mod:`.wire`). Clients and servers import it; it imports nothing of the server side."""
