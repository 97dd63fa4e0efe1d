"""RQ workers: refresh dirty chats, deliver their events in order, fan out to the sinks."""
