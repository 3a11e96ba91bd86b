"""VPC with public subnets (ALB, NAT) and private subnets (tasks) across `azCount` AZs.

Egress choice: NAT gateway, one by default (`natPerAz: true` for one per AZ). The tasks need only
AWS APIs (ECR, CloudWatch Logs, Secrets Manager); interface VPC endpoints for those four cost
~$7.30/month each per AZ (~$58/month for 4 endpoints in 2 AZs) against ~$33/month for one NAT
gateway, so NAT is cheaper at this size. A free S3 gateway endpoint carries ECR image layers (they
are served from S3), so image pulls during scale-out skip the NAT's $0.045/GB processing charge.
"""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws

from .settings import StackSettings


def subnet_cidrs(vpc_cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """Split the VPC into equal blocks: the first `az_count` public, the next `az_count` private."""
    vpc = ipaddress.ip_network(vpc_cidr)
    blocks = [str(b) for b in vpc.subnets(new_prefix=min(vpc.prefixlen + 4, 28))]
    if len(blocks) < 2 * az_count:
        raise ValueError(f"VPC {vpc_cidr} is too small for {az_count} public + private subnets")
    return blocks[:az_count], blocks[az_count:2 * az_count]


class Network(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = settings.tags
        azs = aws.get_availability_zones_output(state="available")
        public_cidrs, private_cidrs = subnet_cidrs(settings.vpc_cidr, settings.az_count)

        self.vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=settings.vpc_cidr,
                               enable_dns_hostnames=True, enable_dns_support=True,
                               tags={**tags, "Name": f"{settings.prefix}-vpc"}, opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id,
                                      tags={**tags, "Name": f"{settings.prefix}-igw"}, opts=child)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt", vpc_id=self.vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags={**tags, "Name": f"{settings.prefix}-public"}, opts=child)

        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        nat_gateways: list[aws.ec2.NatGateway] = []
        private_route_tables: list[aws.ec2.RouteTable] = []
        for i in range(settings.az_count):
            az = azs.names[i]
            public = aws.ec2.Subnet(
                f"{name}-public-{i}", vpc_id=self.vpc.id, cidr_block=public_cidrs[i],
                availability_zone=az, map_public_ip_on_launch=False,
                tags={**tags, "Name": f"{settings.prefix}-public-{i}", "Tier": "public"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{i}", subnet_id=public.id,
                                          route_table_id=public_rt.id, opts=child)
            self.public_subnets.append(public)

            if i == 0 or settings.nat_per_az:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc",
                                  tags={**tags, "Name": f"{settings.prefix}-nat-{i}"}, opts=child)
                nat_gateways.append(aws.ec2.NatGateway(
                    f"{name}-nat-{i}", allocation_id=eip.id, subnet_id=public.id,
                    tags={**tags, "Name": f"{settings.prefix}-nat-{i}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw])))
            nat = nat_gateways[i] if settings.nat_per_az else nat_gateways[0]

            private = aws.ec2.Subnet(
                f"{name}-private-{i}", vpc_id=self.vpc.id, cidr_block=private_cidrs[i],
                availability_zone=az, map_public_ip_on_launch=False,
                tags={**tags, "Name": f"{settings.prefix}-private-{i}", "Tier": "private"}, opts=child)
            private_rt = aws.ec2.RouteTable(
                f"{name}-private-{i}", vpc_id=self.vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}],
                tags={**tags, "Name": f"{settings.prefix}-private-{i}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{i}", subnet_id=private.id,
                                          route_table_id=private_rt.id, opts=child)
            self.private_subnets.append(private)
            private_route_tables.append(private_rt)

        aws.ec2.VpcEndpoint(
            f"{name}-s3", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{settings.region}.s3",
            vpc_endpoint_type="Gateway", route_table_ids=[rt.id for rt in private_route_tables],
            tags={**tags, "Name": f"{settings.prefix}-s3"}, opts=child)

        self.register_outputs({
            "vpcId": self.vpc.id,
            "publicSubnetIds": [s.id for s in self.public_subnets],
            "privateSubnetIds": [s.id for s in self.private_subnets],
        })
